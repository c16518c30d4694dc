#!/bin/sh
# NAME: a CGI script. The request arrives as CGI/1.1 variables (REQUEST_METHOD,
# QUERY_STRING, CONTENT_TYPE, CONTENT_LENGTH, HTTP_*) with the body on stdin; the response
# is headers, a blank line, then the body, on stdout.

body=""
if [ -n "${CONTENT_LENGTH:-}" ] && [ "$CONTENT_LENGTH" -gt 0 ] 2>/dev/null; then
  body=$(head -c "$CONTENT_LENGTH")
fi

name=world
case "&${QUERY_STRING:-}" in
  *"&name="*) name=${QUERY_STRING#*name=}; name=${name%%&*} ;;
esac

echo "Status: 200 OK"
echo "Content-Type: text/plain; charset=utf-8"
echo ""
echo "Hello, $name! (${REQUEST_METHOD:-GET} from a shell CGI)"
if [ -n "$body" ]; then
  printf 'You sent %s bytes: %s\n' "${#body}" "$body"
fi
