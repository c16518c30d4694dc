"""``mode: cgi``: serve one request with app.app (CGI/1.1 in, CGI response out), then exit."""

import wsgiref.handlers

import app

wsgiref.handlers.CGIHandler().run(app.app)
app.wait_for_tasks()
