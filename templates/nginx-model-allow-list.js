// ollama-fleet: a key's model allow-list, checked by nginx (njs) before the request reaches Ollama, and
// the gateway's routing by model (route, below), and a host's answer to a gateway's first try (ifLoaded).
// nginx sends here only requests of keys that have a list ($ollama_fleet_key_models: the names, space
// separated, as /api/tags lists them). A request naming another model, or no model, gets an OpenAI-shaped
// 403 or 400; one naming an allowed model goes on to Ollama unchanged (body and streaming included).

// A gateway's first try names the model the host must have loaded (gateway.IF_LOADED_HEADER).
var IF_LOADED = "X-Ollama-Fleet-If-Loaded";
// The site's internal location answering Ollama's /api/ps (cached for a second or two).
var LOADED_URI = "/_ollama_fleet/loaded";

function listedName(name) {
    // Like ollama_fleet.settings.rules.listed_name: tagged, no scheme, no default registry or library/.
    var last = name.split("/").pop();
    var tagged = last.indexOf(":") >= 0 ? name : name + ":latest";
    var schemeAt = tagged.indexOf("://");
    var parts = (schemeAt >= 0 ? tagged.slice(schemeAt + 3) : tagged).split("/");
    if (parts.length === 3 && parts[0].toLowerCase() === "registry.ollama.ai") {
        parts = parts.slice(1);
    }
    if (parts.length === 2 && parts[0].toLowerCase() === "library") {
        parts = parts.slice(1);
    }
    return parts.join("/");
}

function refuse(r, status, code, message) {
    var origin = r.variables.ollama_fleet_cors_origin;
    if (origin) {
        r.headersOut["Access-Control-Allow-Origin"] = origin;
        r.headersOut["Vary"] = "Origin";
    }
    r.headersOut["Content-Type"] = "application/json";
    var type = status === 403 ? "permission_error" : "invalid_request_error";
    r.return(status, JSON.stringify({error: {message: message, type: type, param: "model", code: code}}));
}

function requestedModel(r) {
    if (r.method === "GET" || r.method === "HEAD" || r.method === "OPTIONS") {
        return null;
    }
    try {
        // A body larger than client_body_buffer_size (the API's body limit) is not in memory: refused.
        var body = JSON.parse(r.requestText);
        var name = body.model || body.name;
        return typeof name === "string" ? name : "";
    } catch (e) {
        return "";
    }
}

function keyAllows(r, model) {
    // The key's allow-list (none: any model); a refusal is answered here and false returned.
    var key = r.variables.ollama_fleet_key_name;
    var allowed = (r.variables.ollama_fleet_key_models || "").split(" ").filter(function (m) {
        return m !== "";
    });
    if (!allowed.length) {
        return true;
    }
    if (model === "") {
        refuse(r, 400, "model_required", "The key '" + key + "' may use only some models, so the request " +
            "must be JSON naming one of them in \"model\": " + allowed.join(", ") + ".");
        return false;
    }
    if (allowed.indexOf(listedName(model)) < 0) {
        refuse(r, 403, "model_not_allowed", "The key '" + key + "' may not use the model '" + model +
            "'; it may use: " + allowed.join(", ") + ".");
        return false;
    }
    return true;
}

function check(r) {
    var model = requestedModel(r);
    if (model === null) {
        r.internalRedirect("@ollama_fleet_upstream"); // nothing named: listing, version, ...
        return;
    }
    if (!keyAllows(r, model)) {
        return;
    }
    if (r.headersIn[IF_LOADED]) {
        ifLoaded(r);
        return;
    }
    r.internalRedirect("@ollama_fleet_upstream");
}

function ifLoaded(r) {
    // A fleet gateway's first try: the header names the model as /api/tags lists it. Taken only when this
    // host's Ollama has it loaded (/api/ps, under two seconds old), or a model on the same weights
    // ($ollama_fleet_runner_mates); else 404 at once, and the gateway tries its next host.
    var wanted = r.headersIn[IF_LOADED];
    var enough = (r.variables.ollama_fleet_runner_mates || wanted).split(" ");
    r.subrequest(LOADED_URI)
        .then(function (reply) {
            if (reply.status !== 200) {
                throw new Error("/api/ps: " + reply.status);
            }
            return JSON.parse(reply.responseText);
        })
        .then(function (ps) {
            var loaded = (ps.models || []).map(function (m) {
                return listedName(m.name || m.model || "");
            });
            if (loaded.some(function (name) { return enough.indexOf(name) >= 0; })) {
                r.internalRedirect("@ollama_fleet_upstream");
            } else {
                refuse(r, 404, "model_not_loaded", "The model '" + wanted + "' is not loaded on this host " +
                    "(a fleet gateway asked for a host that has it loaded).");
            }
        })
        .catch(function () {
            r.internalRedirect("@ollama_fleet_upstream"); // cannot tell: Ollama answers for itself
        });
}

function route(r) {
    // The gateway: a request naming a model goes to the pool of the hosts serving it ($ollama_fleet_gw_pool,
    // a map of the model's listed name); one naming none goes to any host.
    var model = requestedModel(r);
    if (model === null && r.uri.indexOf("/v1/models/") === 0) {
        model = r.uri.slice("/v1/models/".length); // retrieve one model: the name is in the path
    }
    if (model === null) {
        r.internalRedirect("@ollama_fleet_gw_all");
        return;
    }
    if (!keyAllows(r, model)) {
        return;
    }
    if (model === "") {
        refuse(r, 400, "model_required", "The gateway routes requests by model: send JSON naming one in " +
            "\"model\" (GET /v1/models lists them).");
        return;
    }
    r.variables.ollama_fleet_gw_model = listedName(model);
    var pool = r.variables.ollama_fleet_gw_pool;
    if (!pool) {
        refuse(r, 404, "model_not_found", "The model '" + model + "' is not served by any host of the " +
            "fleet (GET /v1/models lists those that are).");
        return;
    }
    r.internalRedirect(pool);
}

export default {check: check, ifLoaded: ifLoaded, route: route, listedName: listedName};
