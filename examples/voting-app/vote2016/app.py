"""vote, written the 2016 way: a Flask app served as CGI, firing a task container per vote.

The page is an ordinary Flask app written for the web root: its form posts to
``url_for("index")``, which is right wherever the gateway serves it (``/vote/`` through the
function's route, or ``/function/vote/``), because the gateway passes the prefix as
``SCRIPT_NAME``. A vote is handed to the record task exactly as the 2016 front end did it,
with the ``dockerrun`` library (here the one-line ``dockerrun.py`` beside this file, which
re-exports ``swarmless.compat.dockerrun``): ``run(image, [voter_id, vote], detach=True,
network_mode=...)``, and the page answers at once. The task is a child container (the
function is deployed with ``docker: scoped``) that outlives this CGI process: it has the
function's ``children_timeout`` to finish, and how it ended is on the call's record.
"""

from __future__ import annotations

import os
import random
import socket
import time

import dockerrun
from flask import Flask, make_response, render_template_string, request, url_for

OPTION_A = os.environ.get("OPTION_A", "Cats")
OPTION_B = os.environ.get("OPTION_B", "Dogs")
RECORD_IMAGE = os.environ.get("RECORD_IMAGE", "")
NETWORK = os.environ.get("NETWORK", "")
DATABASE_URL = os.environ.get("DATABASE_URL", "")
HOSTNAME = socket.gethostname()

client = dockerrun.from_env(version="1.24")
app = Flask(__name__)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ a }} vs {{ b }}!</title>
<style>
body{font-family:sans-serif;background:#f4f4f4;text-align:center;color:#333}
main{max-width:28em;margin:3em auto;background:#fff;padding:2em;border-radius:8px}
button{font-size:1.4em;padding:.8em 1.2em;border:0;border-radius:6px;color:#fff;
 background:#2196f3;cursor:pointer} button#b{background:#00cbca}
button.chosen{outline:4px solid #333}
</style></head>
<body><main>
<h1>{{ a }} vs {{ b }}!</h1>
<form method="post" action="{{ action }}">
<button id="a" name="vote" value="a"{% if vote == "a" %} class="chosen"{% endif %}>{{ a }}</button>
<button id="b" name="vote" value="b"{% if vote == "b" %} class="chosen"{% endif %}>{{ b }}</button>
</form>
<p id="message">{{ message }}</p>
<p><small>Processed by container <span id="container">{{ hostname }}</span></small></p>
</main></body></html>
"""


@app.route("/", methods=["GET", "POST"])
def index() -> object:
    voter_id = request.cookies.get("voter_id") or f"{random.getrandbits(64):016x}"
    vote = request.cookies.get("vote")
    message, status = "", 200
    if request.method == "POST":
        choice = request.form.get("vote", "")
        if choice not in ("a", "b"):
            message, status = f"There is no option {choice!r}.", 400
        else:
            try:
                task = client.run(
                    RECORD_IMAGE,
                    [voter_id, choice, str(int(time.time() * 1000))],
                    detach=True,
                    network_mode=NETWORK,
                    environment={"DATABASE_URL": DATABASE_URL},
                )
            except Exception as e:  # the engine refused, or is away: say so
                message, status = f"Your vote was not recorded: {e}", 503
            else:
                vote = choice
                label = OPTION_A if choice == "a" else OPTION_B
                message = f"You voted for {label} (task {task['Id'][:12]})."
    page = render_template_string(
        PAGE,
        a=OPTION_A,
        b=OPTION_B,
        vote=vote,
        message=message,
        hostname=HOSTNAME,
        action=url_for("index"),
    )
    resp = make_response(page, status)
    resp.set_cookie("voter_id", voter_id)
    if vote:
        resp.set_cookie("vote", vote)
    return resp
