#!/usr/bin/env python3
"""``mode: cgi``: one request, one process, one container, as in 2016."""

from wsgiref.handlers import CGIHandler

from app import app

CGIHandler().run(app)
