-- wrk script: POST a 64 KiB body (to /echo; the URL gives the path), which the
-- app reads from wsgi.input and sends back. wrk adds the Content-Length.
--   wrk -s bench/lua/post64k.lua http://127.0.0.1:PORT/echo
wrk.method = "POST"
wrk.body = string.rep("0123456789abcdef", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
