"""A Flask application for the framework tests (tests/test_frameworks.py).

`create_app(download)` builds it; download is the file /file sends. Also
servable by the CLI: 'flask_app:create_app("/some/file")'.
"""
import hashlib

from flask import (Flask, Response, abort, jsonify, make_response, request, send_file,
                   stream_with_context, url_for)


def create_app(download=None):
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024

    @app.get("/")
    def index():
        return "hello from flask"

    @app.get("/user/<name>")
    def user(name):
        return "user %s" % name

    @app.get("/items/<int:item_id>")
    def item(item_id):
        return jsonify(id=item_id, double=item_id * 2, q=request.args.get("q"))

    @app.get("/where")
    def where():
        # url_for builds from SCRIPT_NAME + the route: PEP 3333 URL reconstruction.
        return jsonify(url=url_for("where"), external=url_for("where", _external=True),
                       script_root=request.script_root, path=request.path)

    @app.post("/json")
    def json_echo():
        data = request.get_json()
        return jsonify(received=data, keys=sorted(data) if isinstance(data, dict) else None), 201

    @app.post("/form")
    def form():
        return jsonify(fields={k: request.form.getlist(k) for k in request.form},
                       content_type=request.mimetype)

    @app.post("/upload")
    def upload():
        files = {}
        for field, f in request.files.items(multi=True):
            data = f.read()
            files[field] = {"filename": f.filename, "size": len(data),
                            "sha256": hashlib.sha256(data).hexdigest(),
                            "content_type": f.mimetype}
        return jsonify(files=files, fields=request.form.to_dict())

    @app.post("/raw")
    def raw():
        # Reads the stream itself: chunked bodies need wsgi.input_terminated.
        h = hashlib.sha256()
        n = 0
        while True:
            block = request.stream.read(65536)
            if not block:
                break
            n += len(block)
            h.update(block)
        return jsonify(size=n, sha256=h.hexdigest())

    @app.get("/stream")
    def stream():
        count = request.args.get("n", 5, type=int)

        @stream_with_context
        def generate():
            for i in range(count):
                yield "line %d %s\n" % (i, request.args.get("tag", ""))
        return Response(generate(), mimetype="text/plain")

    @app.get("/file")
    def file():
        return send_file(download, mimetype="application/octet-stream",
                         as_attachment=True, download_name="blob.bin")

    @app.get("/cookies/set")
    def set_cookies():
        resp = make_response("cookies set")
        resp.set_cookie("session", "abc123", httponly=True)
        resp.set_cookie("theme", "dark", max_age=3600)
        resp.set_cookie("lang", "en", path="/")
        return resp

    @app.get("/cookies/get")
    def get_cookies():
        return jsonify(dict(request.cookies))

    @app.get("/teapot")
    def teapot():
        abort(418)

    @app.get("/boom")
    def boom():
        raise RuntimeError("flask view failed")

    return app
