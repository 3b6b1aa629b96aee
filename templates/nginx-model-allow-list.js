// ollama-fleet: the model a request names, checked by nginx (njs) before the request reaches Ollama: a
// cloud model (unless ollama_cloud) and a key's model allow-list ($ollama_fleet_key_models: the names,
// space separated, as /api/tags lists them); the gateway's routing by model (route, below); a host's
// answer to a gateway's first try (ifLoaded); for the metrics log, the tokens an answer reports (tokens, a
// body filter) and the gateway's tries (tries); on the model seed, which blobs it serves (fannedOutBlob). A
// refused request gets an OpenAI-shaped 400 or 403; any other goes on to Ollama unchanged (body and
// streaming included).

import fs from 'fs';

// A gateway's first try names the model the host must have loaded (gateway.IF_LOADED_HEADER), honoured only
// from the fleet's gateways: the site maps it to $ollama_fleet_if_loaded for their addresses alone.
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

// One reading: Ollama decodes a body with Go's encoding/json into its request structs, which takes a field
// from any key equal to its name under Unicode simple case folding ("Model", "MODEL"), lets the last of
// duplicated keys win except that a null leaves the field as it was, and turns invalid UTF-8 into U+FFFD.
// JSON.parse does none of that, so this module decides only on bodies both read alike and refuses the
// others (400 ambiguous_request) before any decision: not UTF-8; a key that Go folds to "model" or "name"
// but is not exactly that; "model" or "name" anything but a string. On every other body that JSON.parse
// reads, its "model" (or "name", Ollama's older field for show, pull, delete) is the string Go reads.
var MODEL_FIELDS = ["model", "name"];
// Retrieving one model names it in the path (GET /v1/models/{model}).
var MODEL_PATH = "/v1/models/";

function goFolded(key) {
    // encoding/json's folding, for ASCII field names: ASCII letters fold with their other case and with
    // U+017F (long s, to s) and U+212A (Kelvin sign, to k) only; every other rune folds to non-ASCII.
    return key.replace(/\u017f/g, "s").replace(/\u212a/g, "k").replace(/[A-Z]/g, function (c) {
        return c.toLowerCase();
    });
}

function readModel(r) {
    // {model: null} for a request that names no model (a GET other than retrieving one); {model: ""} for
    // no body or an object without one (a key with a list is refused; Ollama refuses it too); {ambiguous:
    // why} for a body Go and JavaScript could read differently, or that JSON.parse does not read as one
    // object (Go may still read a model from it: it stops after the first value).
    if (r.uri.indexOf(MODEL_PATH) === 0) {
        return {model: r.uri.slice(MODEL_PATH.length)}; // gin's :model, from the decoded path like $uri
    }
    if (r.method === "GET" || r.method === "HEAD" || r.method === "OPTIONS") {
        return {model: null};
    }
    var bytes = r.requestBuffer;
    if (bytes === undefined && (r.headersIn["Content-Length"] || r.headersIn["Transfer-Encoding"])) {
        // In a file, not in memory: larger than client_body_buffer_size (nginx_api_max_body_size).
        return {ambiguous: "the body is larger than this proxy reads (nginx_api_max_body_size)"};
    }
    if (bytes === undefined || bytes.length === 0) {
        return {model: ""};
    }
    var text;
    try {
        text = new TextDecoder("utf-8", {fatal: true, ignoreBOM: true}).decode(bytes);
    } catch (e) {
        return {ambiguous: "the body is not valid UTF-8"};
    }
    var body;
    try {
        body = JSON.parse(text);
    } catch (e) {
        body = undefined; // Go's decoder reads a first value and ignores what follows: JSON.parse does not
    }
    if (body === null || typeof body !== "object" || Array.isArray(body)) {
        return {ambiguous: "the body is not one JSON object"};
    }
    var keys = Object.keys(body);
    for (var i = 0; i < keys.length; i++) {
        if (MODEL_FIELDS.indexOf(keys[i]) < 0 && MODEL_FIELDS.indexOf(goFolded(keys[i])) >= 0) {
            return {ambiguous: "the key " + JSON.stringify(keys[i]) + " is read by Ollama as \"" +
                goFolded(keys[i]) + "\"; write it exactly so"};
        }
    }
    for (var j = 0; j < MODEL_FIELDS.length; j++) {
        var field = MODEL_FIELDS[j];
        if (Object.prototype.hasOwnProperty.call(body, field) && typeof body[field] !== "string") {
            return {ambiguous: "\"" + field + "\" must be a string"};
        }
    }
    return {model: body.model || body.name || ""};
}

function isCloud(model) {
    // Ollama (internal/modelref) sends a model to ollama.com when the text after its last ':', trimmed and
    // lowercased, is "cloud" or ends in "-cloud": refused here for any such suffix holding "cloud".
    var at = model.lastIndexOf(":");
    return at >= 0 && model.slice(at + 1).toLowerCase().indexOf("cloud") >= 0;
}

function bodyDecided(r) {
    // The model named (null: none), or undefined after answering a refusal: an ambiguous body, or a cloud
    // model while this server refuses them ($ollama_fleet_refuse_cloud).
    var read = readModel(r);
    if (read.ambiguous) {
        refuse(r, 400, "ambiguous_request", "The request is refused because Ollama could read it otherwise " +
            "than this proxy: " + read.ambiguous + ".");
        return undefined;
    }
    if (read.model && r.variables.ollama_fleet_refuse_cloud === "1" && isCloud(read.model)) {
        refuse(r, 403, "cloud_disabled", "The model '" + read.model + "' would run on ollama.com, outside " +
            "the LAN; this fleet does not send requests there (ollama_cloud).");
        return undefined;
    }
    return read.model;
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
    var model = bodyDecided(r);
    if (model === undefined) {
        return;
    }
    if (model) {
        setMetric(r, "ollama_fleet_model", listedName(model));
    }
    if (model === null) {
        r.internalRedirect("@ollama_fleet_upstream"); // nothing named: listing, version, ...
        return;
    }
    if (!keyAllows(r, model)) {
        return;
    }
    if (r.variables.ollama_fleet_if_loaded) {
        ifLoaded(r);
        return;
    }
    r.internalRedirect("@ollama_fleet_upstream");
}

function ifLoaded(r) {
    // A fleet gateway's first try: the header names the model as /api/tags lists it. Taken only when this
    // host's Ollama has it loaded (/api/ps, under two seconds old), or a model on the same weights
    // ($ollama_fleet_runner_mates); else 404 at once, and the gateway tries its next host.
    var wanted = r.variables.ollama_fleet_if_loaded;
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
    var model = bodyDecided(r);
    if (model === undefined) {
        return;
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
    setMetric(r, "ollama_fleet_model", listedName(model));
    var pool = r.variables.ollama_fleet_gw_pool;
    if (!pool) {
        refuse(r, 404, "model_not_found", "The model '" + model + "' is not served by any host of the " +
            "fleet (GET /v1/models lists those that are).");
        return;
    }
    r.internalRedirect(pool);
}

// --- Metrics (metrics_enabled): what the access log's metrics line needs that nginx does not know ----------

function setMetric(r, name, value) {
    // A site template without the metrics log (metrics_enabled false, or an override) lacks the js_var.
    try {
        r.variables[name] = String(value);
    } catch (e) {
        // nothing to record into
    }
}

// The body filter keeps only the unfinished last line of what it has seen (per request: njs gives each
// request its own copy of this module's variables), up to this many bytes: a longer line (a large embedding
// answer) is not read, and its tokens go uncounted rather than held in memory.
var MAX_LINE = 1048576;
// Ollama's last chunk (Go writes no spaces; other servers may).
var DONE = /"done"\s*:\s*true/;
var pending = "";
var modelSeen = false;

function recordAnswer(r, line) {
    // One line of an answer: Ollama's NDJSON (the last, "done": true, carries the counts), an SSE "data:"
    // line of the OpenAI API (a "usage" object: the last chunk with stream_options.include_usage), or a
    // whole JSON answer. The model comes from the first line naming one, unless the request named it.
    var text = line.indexOf("data: ") === 0 ? line.slice(6) : line;
    var counts = DONE.test(text) || text.indexOf('"usage"') >= 0;
    if (text.charAt(0) !== "{" || (modelSeen && !counts)) {
        return;
    }
    var answer;
    try {
        answer = JSON.parse(text);
    } catch (e) {
        return;
    }
    if (!modelSeen && typeof answer.model === "string" && answer.model) {
        modelSeen = true;
        if (!r.variables.ollama_fleet_model) {
            setMetric(r, "ollama_fleet_model", listedName(answer.model));
        }
    }
    var usage = answer.usage && typeof answer.usage === "object" ? answer.usage : null;
    if (answer.done === true && typeof answer.eval_count === "number") {
        setMetric(r, "ollama_fleet_tokens_in", answer.prompt_eval_count || 0);
        setMetric(r, "ollama_fleet_tokens_out", answer.eval_count);
        setMetric(r, "ollama_fleet_eval_seconds", ((answer.eval_duration || 0) / 1e9).toFixed(6));
    } else if (answer.done === true && typeof answer.prompt_eval_count === "number") {
        setMetric(r, "ollama_fleet_tokens_in", answer.prompt_eval_count); // embeddings
        setMetric(r, "ollama_fleet_tokens_out", 0);
    } else if (usage) {
        // chat/completions and completions: prompt/completion_tokens; responses and messages: input/output.
        setMetric(r, "ollama_fleet_tokens_in", usage.prompt_tokens || usage.input_tokens || 0);
        setMetric(r, "ollama_fleet_tokens_out", usage.completion_tokens || usage.output_tokens || 0);
    }
}

function tokens(r, data, flags) {
    // The answer passes on unchanged, chunk by chunk as it came (streaming is untouched); its complete
    // lines are read on the way.
    r.sendBuffer(data, flags);
    var text = pending + data.toString();
    var lines = text.split("\n");
    pending = lines.pop();
    for (var i = 0; i < lines.length; i++) {
        recordAnswer(r, lines[i].trim());
    }
    if (pending.length > MAX_LINE) {
        pending = "";
        modelSeen = true; // give up on this answer: no more parsing of its lines
    }
    if (flags.last && pending) {
        recordAnswer(r, pending.trim()); // a JSON answer without a final newline
        pending = "";
    }
}

function tries(r) {
    // The gateway's tries: $upstream_addr lists each host tried (", " between hosts, " : " before a try in
    // another location, such as the second try after a first one for a host with the model loaded).
    var addr = r.variables.upstream_addr;
    return addr ? String(addr.split(/, | : /).length) : "0";
}

// On the model seed: "1" when the manifest of a model the fleet fans out names the requested blob, else "".
// $ollama_fleet_seed_manifests: those manifests' paths, space separated (one not pulled yet is skipped);
// $ollama_fleet_blob: the blob's sha256 from the URL.
function fannedOutBlob(r) {
    var wanted = "sha256:" + r.variables.ollama_fleet_blob;
    var paths = (r.variables.ollama_fleet_seed_manifests || "").split(" ");
    for (var i = 0; i < paths.length; i++) {
        var manifest;
        try {
            manifest = JSON.parse(fs.readFileSync(paths[i], "utf8"));
        } catch (e) {
            continue;
        }
        var named = [manifest.config].concat(Array.isArray(manifest.layers) ? manifest.layers : []);
        for (var j = 0; j < named.length; j++) {
            if (named[j] && named[j].digest === wanted) {
                return "1";
            }
        }
    }
    return "";
}

export default {
    check: check,
    ifLoaded: ifLoaded,
    route: route,
    listedName: listedName,
    tokens: tokens,
    tries: tries,
    fannedOutBlob: fannedOutBlob,
};
