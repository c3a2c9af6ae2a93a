package api

import (
	"embed"
	"io/fs"
	"net/http"
)

// consoleFiles is the web console: plain HTML, CSS and JavaScript modules,
// embedded so the binary serves it with no build step.
//
//go:embed ui
var consoleFiles embed.FS

// consoleCSP allows only the console's own files: no inline script or
// style, no other origin, no framing.
const consoleCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// routeConsole serves the console under /ui/. Its files hold no data and
// need no token; every API call the console makes sends the token the
// operator typed in (kept in the tab's sessionStorage).
func (s *Server) routeConsole(mux *http.ServeMux) {
	sub, err := fs.Sub(consoleFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(sub))
	mux.Handle("GET /ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", consoleCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	}))
	mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
}
