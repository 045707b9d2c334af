#!/usr/bin/env python3
"""HTTPS benchmark: yimmo-wsgi over TLS against gunicorn and granian.

    .venv/bin/python bench/tls.py                 # 10 s per run (~4 min)
    .venv/bin/python bench/tls.py --quick         # 2 s runs: a smoke test
    .venv/bin/python bench/tls.py --servers yimmo,granian --scenarios https,handshake -d 5

Every server serves bench/apps/wsgi_bench.py (GET /: "Hello, world!\\n") with
one worker, over TLS with the same certificate, made at run time with trustme
(ECDSA P-256 by default, `--key-type rsa` for RSA 2048; `openssl req` when
trustme is missing) in a temporary folder. Scenarios (--scenarios):

  http       plain HTTP keep-alive GET / (wrk): the baseline, same server
             without TLS, so that "TLS cost" = https - http per request
  https      HTTPS keep-alive GET / (wrk https://...)
  handshake  a new TLS connection for every request, full handshakes
             (bench/tlsload.c, full mode: no session offered)
  resume     a new TLS connection for every request, each offering the
             session of the previous one (bench/tlsload.c, resume mode)

wrk is not used for the handshake scenarios: on reconnect it keeps its SSL
object (SSL_shutdown + SSL_clear), so the session is offered again and its
"Connection: close" runs measure resumed handshakes whenever the server
issues tickets; bench/tlsload.c opens a new SSL object per connection.

For each scenario and server: start the server pinned to --server-cpu
(taskset -c 0) on 127.0.0.1 and a free port, in its own process group; check
over TLS (verifying the certificate) that GET / answers the hello body and
note the TLS version, cipher and ALPN; warm up; measure with the load
generator pinned to --client-cpu (taskset -c 1); read utime+stime of the
server's process tree from /proc around the measured run (server CPU us per
request or per handshake), the load generator's CPU time (client CPU busy)
and the kernel's count of TCP connections opened (/proc/net/snmp
ActiveOpens: new connections per request, the check that the keep-alive
runs kept their connections and the handshake runs made one per request);
stop the server (its process group only).

Prints one table per scenario with ratios against yimmo, and a summary of
yimmo/peer ratios; writes them to bench/results/tls-latest.md (and .json).
"""
import argparse
import json
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import (HERE, HOST, RESULTS, ROOT, WSGI_SERVERS, fmt_mib,  # noqa: E402
                    fmt_us, log, ratio)

APP = "wsgi_bench:app"
HELLO = b"Hello, world!\n"
TLSLOAD_SRC = os.path.join(HERE, "tlsload.c")
TLSLOAD_BIN = os.path.join(ROOT, "build", "tlsload")


# --- certificates ---------------------------------------------------------------------

def make_certs(folder, key_type):
    """Write cert.pem (leaf, then issuer), key.pem (PKCS#8: granian takes no
    other form) and ca.pem into folder, for 127.0.0.1 and localhost. Returns
    (cert, key, ca, how they were made)."""
    cert, key, ca = (os.path.join(folder, n) for n in ("cert.pem", "key.pem", "ca.pem"))
    try:
        import trustme
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        trustme = None
    if trustme is not None:
        kt = trustme.KeyType.ECDSA if key_type == "ecdsa" else trustme.KeyType.RSA
        authority = trustme.CA(key_type=kt)
        leaf = authority.issue_cert("127.0.0.1", "localhost")
        pkey = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
        with open(key, "wb") as f:
            f.write(pkey.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        with open(cert, "wb") as f:
            f.write(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        authority.cert_pem.write_to_path(ca)
        how = "trustme %s: a CA and a leaf for 127.0.0.1/localhost signed by it, %s key" % (
            common.version_of("trustme"), "ECDSA P-256" if key_type == "ecdsa" else "RSA 2048")
        return cert, key, ca, how
    # Without trustme: a self-signed certificate, which is also its own CA.
    newkey = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_type == "ecdsa"
              else ["-newkey", "rsa:2048"])
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key,
                    "-out", cert] + newkey, check=True, capture_output=True)
    shutil.copyfile(cert, ca)
    return cert, key, ca, "openssl req -x509 (self-signed, %s)" % (
        "ECDSA P-256" if key_type == "ecdsa" else "RSA 2048")


# --- servers -----------------------------------------------------------------------------
#
# Each takes (port, tls) -- tls None or (certfile, keyfile) -- and returns argv;
# the plain command is common.WSGI_SERVERS' with one worker.

def _with_tls(name, flags, **kw):
    build = WSGI_SERVERS[name].build

    def cmd(port, tls):
        argv = build(port, APP, 1, **kw)
        if tls:
            # Options go before the app, the last argument.
            argv = argv[:-1] + flags(*tls) + argv[-1:]
        return argv
    return cmd


SERVERS = {
    "yimmo": (_with_tls("yimmo", lambda c, k: ["--certfile", c, "--keyfile", k]), "yimmo",
              "`yimmo-wsgi -w 1 --threads 0 --certfile C --keyfile K`: C on libev, OpenSSL; "
              "the app on the event-loop thread"),
    "gunicorn": (_with_tls("gunicorn", lambda c, k: ["--certfile", c, "--keyfile", k]),
                 "gunicorn",
                 "`gunicorn -w 1 --certfile C --keyfile K`, sync worker: Python's ssl module; "
                 "closes the connection after each response; builds a new SSLContext for every "
                 "connection (system CA store and certificate loaded each time), so it never "
                 "resumes a session"),
    "gunicorn-gthread": (_with_tls("gunicorn-gthread",
                                   lambda c, k: ["--certfile", c, "--keyfile", k]),
                         "gunicorn",
                         "`gunicorn -w 1 --worker-class gthread --threads 4 --certfile C "
                         "--keyfile K`: keep-alive; a new SSLContext per connection too"),
    "granian": (_with_tls("granian",
                          lambda c, k: ["--ssl-certificate", c, "--ssl-keyfile", k]),
                "granian",
                "`granian --interface wsgi --workers 1 --no-ws --ssl-certificate C "
                "--ssl-keyfile K`: Rust (hyper/tokio, rustls); its default minimum is TLS 1.3"),
}


# --- scenarios -------------------------------------------------------------------------------

SCENARIOS = {
    "http": ("plain HTTP keep-alive GET / (wrk): the baseline without TLS", False, "wrk"),
    "https": ("HTTPS keep-alive GET / (wrk https://)", True, "wrk"),
    "handshake": ("a new connection and a full TLS handshake for every GET / "
                  "(bench/tlsload.c full)", True, "full"),
    "resume": ("a new connection for every GET /, each offering the previous connection's "
               "session (bench/tlsload.c resume)", True, "resume"),
}


def tls_probe(port, ca):
    """One GET / over TLS, verifying the certificate against ca for
    127.0.0.1: returns (status, head, body, TLS version, cipher, ALPN)."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((HOST, port), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=HOST) as s:
            s.sendall(common.request_bytes(port))
            status, head, body, _ = common.read_response(s)
            return (status, head, body, s.version(), s.cipher()[0],
                    s.selected_alpn_protocol())


def active_opens():
    """TCP connections this machine opened (connect()s), from /proc/net/snmp."""
    with open("/proc/net/snmp") as f:
        lines = [ln.split() for ln in f if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("ActiveOpens")])


def build_tlsload(cc):
    """Compile bench/tlsload.c into build/tlsload when missing or older than the source."""
    if (os.path.exists(TLSLOAD_BIN)
            and os.path.getmtime(TLSLOAD_BIN) >= os.path.getmtime(TLSLOAD_SRC)):
        return TLSLOAD_BIN
    os.makedirs(os.path.dirname(TLSLOAD_BIN), exist_ok=True)
    cmd = [cc, "-O2", "-o", TLSLOAD_BIN, TLSLOAD_SRC, "-lssl", "-lcrypto"]
    log("building the load generator: %s" % " ".join(cmd))
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("bench: compiling %s failed (libssl-dev installed?):\n%s"
                 % (TLSLOAD_SRC, r.stderr))
    return TLSLOAD_BIN


def wrk_cmd(args, port, seconds, tls):
    cmd = common.wrk_cmd(port, seconds, threads=args.threads, connections=args.connections,
                         cpu=args.client_cpu)
    if tls:
        cmd[-1] = cmd[-1].replace("http://", "https://", 1)
    return cmd


def measure_wrk(proc, cmd, seconds):
    """common.measure, plus wrk's own CPU time (it is the only child reaped
    during the run) and the TCP connections opened."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    opens0 = active_opens()
    res = common.measure(proc, cmd, seconds)
    opens1 = active_opens()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    res["client_cpu_util"] = client / res["seconds"] if res.get("seconds") else None
    res["connections"] = opens1 - opens0
    res["conns_per_req"] = res["connections"] / res["requests"]
    res["errors"] = res["socket_errors"] + res["non_2xx"]
    return res


def run_tlsload(binary, server, port, args, mode):
    """Run tlsload against the running server; read the server tree's and
    tlsload's CPU time and the connections opened when it starts and stops
    counting."""
    cmd = [binary, HOST, str(port), str(args.handshake_connections), str(args.duration),
           str(args.tlsload_warmup), mode, HELLO.decode()]
    if args.client_cpu is not None:
        cmd = ["taskset", "-c", args.client_cpu] + cmd
    result, marks, peak, err = common.run_marked_load(
        cmd, server, "tlsload", "handshakes", args.duration + args.tlsload_warmup + 30,
        extra=active_opens)
    n = int(result["handshakes"])
    secs = float(result["seconds"])
    cpu_s = common.marked_cpu_s(marks, 1)
    client_s = common.marked_cpu_s(marks, 2)
    conns = marks["stop"][3] - marks["start"][3]
    return {
        "requests": n, "seconds": secs, "rps": n / secs,
        "resumed": int(result["resumed"]), "errors": int(result["errors"]),
        "lat_p50_us": float(result["p50_us"]), "lat_p99_us": float(result["p99_us"]),
        "cpu_s": cpu_s, "cpu_us_per_req": cpu_s * 1e6 / n if n else None,
        "cpu_util": cpu_s / secs,
        "client_cpu_util": client_s / secs if client_s is not None else None,
        "connections": conns, "conns_per_req": conns / n if n else None,
        "peak_rss": peak, "client_version": result.get("version"),
        "client_cipher": result.get("cipher"), "load_command": cmd,
        "first_error": err.strip().splitlines()[0] if err.strip() else None,
    }


# --- one run ---------------------------------------------------------------------------------

def bench_one(name, scen, args):
    build = SERVERS[name][0]
    _, tls, mode = SCENARIOS[scen]
    port = common.free_port()
    logpath = os.path.join(RESULTS, "tls-%s-%s.log" % (name, scen))
    proc, cmd = common.start_server(build(port, (args.cert, args.key) if tls else None),
                                    logpath, cpu=args.server_cpu)
    log("[%s %s] %s" % (name, scen, " ".join(cmd)))
    try:
        if tls:
            status, head, body, version, cipher, alpn = common.wait_ready(
                proc, port, args.start_timeout, probe=lambda p: tls_probe(p, args.ca))
        else:
            status, head, body = common.wait_ready(proc, port, args.start_timeout)
            version = cipher = alpn = None
        if status != 200 or body != HELLO:
            raise RuntimeError("GET / answered %d %r, expected 200 %r" % (status, body[:60], HELLO))
        if mode == "wrk":
            if args.warmup > 0:
                common.run_wrk(wrk_cmd(args, port, args.warmup, tls), args.warmup)
            res = measure_wrk(proc, wrk_cmd(args, port, args.duration, tls), args.duration)
            res["load_command"] = wrk_cmd(args, port, args.duration, tls)
        else:
            res = run_tlsload(args.tlsload, proc, port, args, mode)
    finally:
        common.stop(proc)
    res.update(command=cmd, version=common.version_of(SERVERS[name][1]), tls_version=version,
               cipher=cipher, alpn=alpn, response_head=head.decode("latin-1"))
    log("[%s %s] %.0f/s, %s server CPU/req, server busy %.0f%%, client busy %s, "
        "%.2f new connections/req%s, errors %d%s"
        % (name, scen, res["rps"],
           "%.1f us" % res["cpu_us_per_req"] if res["cpu_us_per_req"] is not None else "-",
           100 * res["cpu_util"],
           "%.0f%%" % (100 * res["client_cpu_util"]) if res["client_cpu_util"] is not None
           else "-", res["conns_per_req"] or 0,
           ", resumed %d" % res["resumed"] if "resumed" in res else "", res["errors"],
           " (%s)" % res["first_error"] if res.get("first_error") else ""))
    return res


# --- report ----------------------------------------------------------------------------------

def _pct(v):
    return "%.0f%%" % (100 * v) if v is not None else "-"


def scenario_table(scen, rows):
    base = rows.get("yimmo") if isinstance(rows.get("yimmo"), dict) else None
    unit = "handshakes/s" if SCENARIOS[scen][2] in ("full", "resume") else "requests/s"
    per = "handshake" if unit == "handshakes/s" else "request"
    extra = SCENARIOS[scen][2] in ("full", "resume")
    out = ["| server | %s | vs yimmo | server CPU us/%s | vs yimmo | p99 | server CPU busy | "
           "client CPU busy | new conns/req | %speak RSS | errors |"
           % (unit, per, "resumed | " if extra else ""),
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|%s---:|---:|" % ("---:|" if extra else "")]
    for name, r in rows.items():
        if not isinstance(r, dict):
            out.append("| %s | skipped: %s |%s" % (name, str(r).replace("|", "\\|"),
                                                    " |" * (10 if extra else 9)))
            continue
        cpu = r["cpu_us_per_req"]
        out.append("| %s | %.0f | %s | %.1f | %s | %s | %s | %s | %.2f | %s%s | %d |" % (
            name, r["rps"], ratio(r["rps"], base["rps"]) if base else "-", cpu,
            ratio(cpu, base["cpu_us_per_req"]) if base else "-", fmt_us(r.get("lat_p99_us")),
            _pct(r["cpu_util"]), _pct(r["client_cpu_util"]), r["conns_per_req"],
            "%.0f%% | " % (100.0 * r["resumed"] / r["requests"]) if extra else "",
            fmt_mib(r["peak_rss"]), r["errors"]))
    return "\n".join(out)


def summary_table(results, servers, scenarios):
    """yimmo / peer: rate and server CPU per request or handshake, by scenario."""
    peers = [s for s in servers if s != "yimmo"]
    head = ["scenario", "figure", "yimmo"] + peers + ["yimmo / %s" % p for p in peers]
    out = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for scen in scenarios:
        rows = results.get(scen, {})
        y = rows.get("yimmo") if isinstance(rows.get("yimmo"), dict) else None
        for key, label, fmt in (("rps", "per second", "%.0f"),
                                ("cpu_us_per_req", "server CPU us", "%.1f")):
            cells = [scen, label]
            for s in ["yimmo"] + peers:
                r = rows.get(s)
                cells.append(fmt % r[key] if isinstance(r, dict) else "-")
            for p in peers:
                r = rows.get(p)
                cells.append("%.2fx" % (y[key] / r[key])
                             if y and isinstance(r, dict) and r[key] else "-")
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def tls_cost_table(results, servers):
    """Server CPU us per request, HTTPS keep-alive minus plain HTTP."""
    h, s = results.get("http", {}), results.get("https", {})
    out = ["| server | http CPU us/req | https CPU us/req | TLS cost us/req |",
           "|---|---:|---:|---:|"]
    for name in servers:
        a, b = h.get(name), s.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            out.append("| %s | %.1f | %.1f | %+.1f |" % (name, a["cpu_us_per_req"],
                                                        b["cpu_us_per_req"],
                                                        b["cpu_us_per_req"] - a["cpu_us_per_req"]))
    return "\n".join(out) if len(out) > 2 else ""


def _git(*a):
    try:
        return subprocess.run(["git"] + list(a), cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def report(args, argv, results, busy, load_end):
    so = os.path.join(ROOT, "yimmo")
    ext = [f for f in os.listdir(so) if f.startswith("_yimmo") and f.endswith(".so")]
    ext_when = (time.strftime("%Y-%m-%d %H:%M", time.localtime(
        os.path.getmtime(os.path.join(so, ext[0])))) if ext else "?")
    wrk_v = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout
    wrk_v = (wrk_v.split() or ["?", "?"])[1] if wrk_v else "?"
    ossl = ssl.OPENSSL_VERSION
    lines = [
        "# yimmo HTTPS benchmark", "",
        "- when: %s" % common.now(),
        "- machine: %s" % common.machine(),
        "- machine busy before the run (all CPUs, over 1 s): %.0f%%; load average (1, 5, 15 "
        "min) at the start: %s, at the end: %s (this run's server and client add up to about 2)"
        % (100 * busy, args.load_start, load_end),
        "- yimmo %s at commit %s%s, extension built %s; %s"
        % (common.version_of("yimmo"), _git("rev-parse", "--short", "HEAD") or "?",
           " plus uncommitted changes" if _git("status", "--porcelain") else "", ext_when,
           ", ".join("%s %s" % (m, common.version_of(m)) for m in ("gunicorn", "granian"))),
        "- OpenSSL (Python's ssl, wrk, tlsload): %s; wrk %s" % (ossl, wrk_v),
        "- certificate: %s" % args.cert_how,
        "- command: `%s`" % " ".join(["python", "bench/tls.py"] + argv),
        "- keep-alive scenarios: `%s` after a %g s warm-up"
        % (" ".join(wrk_cmd(args, 0, args.duration, True)).replace(":0/", ":PORT/"),
           args.warmup),
        "- handshake scenarios: `%s HOST PORT %d %g %g full|resume 'Hello, world!\\n'` "
        "(%g s warm-up, then %g s counted; a new TCP connection and SSL object per request, "
        "`Connection: close`, ALPN http/1.1 offered)"
        % (os.path.relpath(args.tlsload, ROOT), args.handshake_connections, args.duration,
           args.tlsload_warmup, args.tlsload_warmup, args.duration),
        "- server pinned to CPU %s, load generator to CPU %s; every server restarted for every "
        "scenario" % (args.server_cpu or "(none)", args.client_cpu or "(none)"),
        "- server CPU us = utime+stime of the server's process tree over the measured run / "
        "requests (or handshakes); CPU busy = CPU seconds / wall seconds (100% = one CPU); "
        "new conns/req = TCP ActiveOpens (/proc/net/snmp) over the run / requests; ratios "
        "are against yimmo's row (above 1 in the CPU column: the peer spends more)",
        "",
        "## Summary: yimmo against each peer", "",
        summary_table(results, args.servers, args.scenarios), "",
        "(the ratio columns are yimmo / peer: above 1 in a \"per second\" row and below 1 in "
        "a \"server CPU us\" row favour yimmo)", "",
    ]
    cost = tls_cost_table(results, args.servers)
    if cost:
        lines += ["## TLS cost per keep-alive request", "", cost, ""]
    for scen in args.scenarios:
        rows = results.get(scen, {})
        if rows:
            lines += ["## %s: %s" % (scen, SCENARIOS[scen][0]), "", scenario_table(scen, rows), ""]
    lines += ["## Servers and what they negotiated", ""]
    for name in args.servers:
        seen = {(r["tls_version"], r["cipher"], r["alpn"]) for rows in results.values()
                for n, r in rows.items() if n == name and isinstance(r, dict)
                and r.get("tls_version")}
        neg = "; ".join("%s %s, ALPN %s" % t for t in sorted(seen, key=str)) or "-"
        lines.append("- %s %s: %s. Negotiated with Python's ssl client: %s"
                     % (name, common.version_of(SERVERS[name][1]), SERVERS[name][2], neg))
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description="HTTPS: yimmo-wsgi vs gunicorn and granian.")
    ap.add_argument("--servers", default=",".join(SERVERS),
                    help="comma-separated, from: %s (default: all)" % ", ".join(SERVERS))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help="comma-separated, from: %s (default: all)" % ", ".join(SCENARIOS))
    ap.add_argument("-d", "--duration", type=int, default=10, help="measured seconds (default 10)")
    ap.add_argument("--warmup", type=int, default=2,
                    help="wrk warm-up seconds before the keep-alive runs (default 2)")
    ap.add_argument("--tlsload-warmup", type=float, default=1.0,
                    help="uncounted seconds at the start of a handshake run (default 1)")
    ap.add_argument("-c", "--connections", type=int, default=50,
                    help="wrk connections, keep-alive runs (default 50)")
    ap.add_argument("--handshake-connections", type=int, default=50,
                    help="concurrent connections in the handshake runs (default 50)")
    ap.add_argument("-t", "--threads", type=int, default=1, help="wrk threads (default 1)")
    ap.add_argument("--key-type", choices=("ecdsa", "rsa"), default="ecdsa",
                    help="certificate key: ECDSA P-256 (default) or RSA 2048")
    ap.add_argument("--server-cpu", default="0",
                    help="CPU list for the server (default 0; '' = no pinning)")
    ap.add_argument("--client-cpu", default="1",
                    help="CPU list for the load generator (default 1; '' = no pinning)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 s runs, 1 s warm-up")
    ap.add_argument("--cc", default=os.environ.get("CC", "cc"),
                    help="C compiler for bench/tlsload.c (default $CC or cc)")
    ap.add_argument("--start-timeout", type=float, default=20.0,
                    help="seconds to wait for a server to answer (default 20)")
    ap.add_argument("--no-install", action="store_true",
                    help="skip missing peers instead of pip-installing them")
    ap.add_argument("-o", "--output", default=os.path.join(RESULTS, "tls-latest.md"),
                    help="markdown report (default bench/results/tls-latest.md)")
    args = ap.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.tlsload_warmup = 2, 1, 0.5

    def names(text, known, what):
        out = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in out if n not in known]
        if bad:
            ap.error("unknown %s: %s" % (what, ", ".join(bad)))
        return out
    args.servers = names(args.servers, SERVERS, "server(s)")
    args.scenarios = names(args.scenarios, SCENARIOS, "scenario(s)")
    args.server_cpu, args.client_cpu = common.check_tools(args.server_cpu or None,
                                                          args.client_cpu or None)
    if any(SCENARIOS[s][2] != "wrk" for s in args.scenarios):
        args.tlsload = build_tlsload(args.cc)
    else:
        args.tlsload = TLSLOAD_BIN
    os.makedirs(RESULTS, exist_ok=True)

    busy = common.machine_busy()
    args.load_start = loadavg()
    if busy > 0.10:
        log("bench: the machine is %.0f%% busy before starting: figures will be noisy"
            % (100 * busy))

    unusable = {}
    for name in args.servers:
        module = SERVERS[name][1]
        ok, why = common.ensure_module(module, None if module == "yimmo" else module,
                                       install=not args.no_install)
        if ok and module == "yimmo":
            import yimmo
            if not hasattr(yimmo, "check_tls"):
                ok, why = False, "this build of yimmo has no TLS (no yimmo.check_tls)"
        if not ok:
            log("[%s] skipped: %s" % (name, why))
            unusable[name] = why

    results = {}
    with tempfile.TemporaryDirectory(prefix="yimmo-tls-bench-") as tmp:
        args.cert, args.key, args.ca, args.cert_how = make_certs(tmp, args.key_type)
        if "yimmo" not in unusable:
            import yimmo
            try:
                yimmo.check_tls({"certfile": args.cert, "keyfile": args.key})
            except Exception as e:  # noqa: BLE001 - reported as the skip reason
                unusable["yimmo"] = "yimmo.check_tls refused the certificate: %s" % e
        for scen in args.scenarios:
            rows = results.setdefault(scen, {})
            for name in args.servers:
                if name in unusable:
                    rows[name] = unusable[name]
                    continue
                try:
                    rows[name] = bench_one(name, scen, args)
                except Exception as e:  # noqa: BLE001 - one failure skips that run
                    why = (str(e).splitlines() or [type(e).__name__])[0]
                    log("[%s %s] skipped: %s (see bench/results/tls-%s-%s.log)"
                        % (name, scen, why, name, scen))
                    rows[name] = why
        args_out = {k: v for k, v in vars(args).items()}
    text = report(args, argv, results, busy, loadavg())
    print(text)
    with open(args.output, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump({"args": args_out, "busy_before": busy, "results": results}, f, indent=1,
                  default=str)
    log("written: %s" % os.path.relpath(args.output, ROOT))
    return 0 if any(isinstance(r, dict) for rows in results.values()
                    for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
