// NAME: a CGI function in Go, built into a static binary that runs in an image FROM
// scratch. net/http/cgi turns the CGI/1.1 request (environment and stdin) into an
// http.Request and the handler's answer into a CGI response on stdout.
package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/cgi"
	"os"
	"runtime"
)

func main() {
	if err := cgi.Serve(http.HandlerFunc(handle)); err != nil {
		fmt.Fprintln(os.Stderr, "NAME:", err)
		os.Exit(1)
	}
}

func handle(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if name == "" {
		name = "world"
	}
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "Hello, %s! (%s from Go %s)\n", name, r.Method, runtime.Version())
	if len(body) > 0 {
		fmt.Fprintf(w, "You sent %d bytes: %s\n", len(body), body)
	}
}
