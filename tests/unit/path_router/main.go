// Ollama's request routing, for the path differential (test_path_differential.py): the same layers as
// v0.24.0's server.Serve, each built from the same code (gin from the module versions Ollama pins):
//
//   - net/http's ServeMux with "/" (Ollama registers its handler on http.DefaultServeMux): it answers a
//     path with dot segments or doubled slashes with a redirect to the cleaned path;
//   - registry.Local's switch on the exact r.URL.Path (/api/delete, /api/pull), ahead of gin;
//   - gin (gin.Default in Ollama; its middlewares do not route) with HandleMethodNotAllowed, every route of
//     GenerateRoutes registered as Ollama registers it.
//
// Each handler answers 200 with the route it is, in X-Ollama-Route ("METHOD /path/:param" as the router
// writes it), so the test knows which of Ollama's handlers a request that nginx let through would reach.
//
// Usage: pathrouter ROUTES.json ADDRESS (ROUTES.json: [["POST", "/api/pull"], ...]; ADDRESS: 127.0.0.1:port).
package main

import (
	"encoding/json"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/gin-gonic/gin"
)

func main() {
	data, err := os.ReadFile(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	var routes [][2]string
	if err := json.Unmarshal(data, &routes); err != nil {
		log.Fatal(err)
	}

	gin.SetMode(gin.ReleaseMode)
	r := gin.New()
	r.HandleMethodNotAllowed = true
	for _, route := range routes {
		name := route[0] + " " + route[1]
		r.Handle(route[0], route[1], func(c *gin.Context) {
			c.Header("X-Ollama-Route", name)
			c.String(http.StatusOK, name)
		})
	}

	// registry.Local (server/internal/registry/server.go): these two paths never reach gin, whatever the
	// method (a wrong one gets its 405 there).
	local := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		switch req.URL.Path {
		case "/api/delete", "/api/pull":
			method := map[string]string{"/api/delete": "DELETE", "/api/pull": "POST"}[req.URL.Path]
			if req.Method != method {
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			name := method + " " + req.URL.Path
			w.Header().Set("X-Ollama-Route", name)
			w.Write([]byte(name))
		default:
			r.ServeHTTP(w, req)
		}
	})

	mux := http.NewServeMux() // what http.DefaultServeMux is, without net/http/pprof (Ollama imports none)
	mux.Handle("/", local)

	listener, err := net.Listen("tcp", os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(listener, mux))
}
