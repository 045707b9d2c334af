"""`yimmo-wsgi` / `python -m yimmo`: flags, environment, config file, app specs.

The resolution matrix (every option from each source, every bad value) runs
in-process through yimmo.config.load, the function main() calls; the rest
runs the real CLI in a subprocess. Bad input of any kind must give exit
status 2 and exactly one line on stderr: "yimmo-wsgi: error: ...".
"""
import base64
import re
import signal
import socket
import subprocess
import sys
import tomllib

import pytest

import yimmo
from yimmo import config
from apps.harness import (APPS, ERR, assert_one_line_error, clean_env, run_cli,  # noqa: F401
                          server, unix_request, wait_until)




# --- Basics ------------------------------------------------------------------------


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout == "yimmo-wsgi %s\n" % yimmo.__version__


def test_help_lists_every_flag_and_variable():
    r = run_cli("--help")
    assert r.returncode == 0
    for o in config.OPTIONS:
        for flag in o.flags:
            assert flag in r.stdout, flag
        if o.name not in config.CLI_ONLY:
            assert o.env in r.stdout, o.env


def test_console_script_is_declared():
    with open(APPS.parent.parent / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["yimmo-wsgi"] == "yimmo.cli:main"


def test_no_app_is_an_error():
    assert_one_line_error(run_cli("-w", "2"), "no application given")


# --- Bad flags ------------------------------------------------------------------------

BAD_FLAGS = [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["-w"], "expected one argument"),
    (["-w", "0"], "-w/--workers: must be >= 1"),
    (["--workers", "two"], "expected an integer"),
    (["--threads", "-1"], "--threads: must be between 0 and 1024"),
    (["--threads", "1025"], "--threads: must be between 0 and 1024"),
    (["-t", "soon"], "-t/--timeout: expected a number"),
    (["--graceful-timeout", "-5"], "must be >= 0"),
    (["--keep-alive", "-1"], "--keep-alive: must be >= 0"),
    (["--log-level", "loud"], "must be one of debug, info, warning, error, critical"),
    (["-b", "localhost:http"], "bad port 'http'"),
    (["-b", "127.0.0.1:70000"], "bad port '70000'"),
    (["-b", "[::1"], "missing ']'"),
    (["-b", "::1:80"], "write IPv6 addresses as [ADDR]:PORT"),
    (["-b", "unix:"], "has no path"),
    (["-b", "fd://three"], "fd:// takes a file descriptor number"),
    (["--access-logformat", "%(h"], "not a valid log format"),
    (["--access-logformat", "%(h)d"], "not a valid log format"),     # text, as in gunicorn
    (["--limit-request-line", "0"], "must be between 1 and 1048576"),
    (["--limit-request-fields", "x"], "expected an integer"),
    (["--limit-request-field-size", "0"], "must be between 1 and 1048576"),
    (["--max-body-size", "-1"], "must be between 1 and"),
    (["--backlog", "0"], "must be between 1 and 65535"),
    # The engine's own ranges: --check-config says what the start would.
    (["--backlog", "99999999999"], "must be between 1 and 65535"),
    (["--worker-connections", "99999999999"], "must be between 1 and 16777216"),
    (["--read-size", "99999999999"], "must be between 1 and 16777216"),
    (["--graceful-timeout", "nan"], "expected a number"),
    (["-t", "inf"], "expected a number"),
    (["-b", "fd://99999999999999999999"], "fd:// takes a file descriptor number"),
    (["-b", "fd://\u0663"], "fd:// takes a file descriptor number"),
]


@pytest.mark.parametrize("args,fragment", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_exit_2(args, fragment):
    assert_one_line_error(run_cli("hello:application", *args), fragment)


# --- App specs ------------------------------------------------------------------------

BAD_APPS = [
    ("nosuchmodule:app", "cannot import 'nosuchmodule': no module named 'nosuchmodule'"),
    ("hello.nosub:app", "cannot import 'hello.nosub'"),
    ("hello:nope", "module 'hello' has no attribute 'nope'"),
    ("hello:create_app(", "invalid expression 'create_app('"),
    ("hello:", "nothing after ':'"),
    ("1bad:app", "is not a module name"),
    ("hello:not_callable", "app 'hello:not_callable' is not callable (it is int)"),
    ("hello:create_app(1, 2, 3)", "raised TypeError"),
    ("hello:failing_factory()", "raised RuntimeError: the factory refused"),
    ("hello:undefined_name.attr", "raised NameError"),
    ("broken_import", "error importing 'broken_import': ModuleNotFoundError: "
                      "No module named 'yimmo_no_such_dependency' (broken_import.py:2)"),
]


@pytest.mark.parametrize("spec,fragment", BAD_APPS, ids=[s for s, _ in BAD_APPS])
def test_bad_app_check_config(spec, fragment):
    assert_one_line_error(run_cli("--check-config", spec), fragment)


@pytest.mark.parametrize("spec,fragment", [BAD_APPS[0], BAD_APPS[2], BAD_APPS[6], BAD_APPS[10]],
                         ids=["missing-module", "missing-name", "not-callable", "import-error-inside"])
def test_bad_app_when_serving_is_one_line_exit_2(spec, fragment):
    # Loaded in the worker after fork: the manager holds its startup lines
    # until a worker is ready, so the user still sees one line.
    assert_one_line_error(run_cli("-b", "127.0.0.1:0", "-w", "2", spec), fragment)


def test_bad_app_with_preload_is_one_line_exit_2():
    assert_one_line_error(run_cli("-b", "127.0.0.1:0", "--preload", "hello:nope"), "has no attribute 'nope'")


@pytest.mark.parametrize("body,fragment", [
    ("import sys\nsys.exit(1)\n", "error importing 'quits': it called sys.exit(1) (quits.py:2)"),
    ("import sys\nsys.exit('no DATABASE_URL')\n",
     "error importing 'quits': it called sys.exit('no DATABASE_URL') (quits.py:2)"),
    ("import sys\nsys.exit()\n", "error importing 'quits': it called sys.exit(None)"),
])
@pytest.mark.parametrize("mode", ["check-config", "serving"])
def test_sys_exit_while_importing_is_one_line_exit_2(tmp_path, body, fragment, mode):
    (tmp_path / "quits.py").write_text(body)
    args = ("--check-config",) if mode == "check-config" else ("-b", "127.0.0.1:0", "-w", "2")
    assert_one_line_error(run_cli(*args, "quits:app", cwd=tmp_path), fragment)


def test_worker_exiting_before_it_is_ready_is_one_line_exit_2(tmp_path):
    # os._exit() skips every handler: only the worker's exit status tells.
    (tmp_path / "dies.py").write_text("import os\nos._exit(5)\n")
    r = run_cli("-b", "127.0.0.1:0", "dies:app", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == "yimmo-wsgi: error: worker exited with code 5 before it was ready"


def test_syntax_error_in_the_module(tmp_path):
    (tmp_path / "badsyntax.py").write_text("def application(environ, start_response)\n    return []\n")
    line = assert_one_line_error(run_cli("--check-config", "badsyntax:application", cwd=tmp_path),
                                 "error importing 'badsyntax': SyntaxError")
    assert "badsyntax.py:1)" in line


@pytest.mark.parametrize("mode", ["check-config", "serving"])
def test_a_base_exception_while_importing_is_one_line_exit_2(tmp_path, mode):
    (tmp_path / "odd.py").write_text("class Odd(BaseException):\n    pass\n\n"
                                     "raise Odd('half a deploy')\n")
    args = ("--check-config",) if mode == "check-config" else ("-b", "127.0.0.1:0")
    assert_one_line_error(run_cli(*args, "odd:app", cwd=tmp_path),
                          "error importing 'odd': Odd: half a deploy (odd.py:4)")


@pytest.mark.parametrize("mode", ["check-config", "serving", "preload"])
def test_a_keyboard_interrupt_raised_by_the_app_is_one_line_exit_2(tmp_path, mode):
    # The app's own, not a Ctrl-C (which a SIGINT handler tells apart).
    (tmp_path / "interrupted.py").write_text("raise KeyboardInterrupt('half a deploy')\n")
    args = {"check-config": ("--check-config",), "serving": ("-b", "127.0.0.1:0"),
            "preload": ("-b", "127.0.0.1:0", "--preload")}[mode]
    assert_one_line_error(run_cli(*args, "interrupted:app", cwd=tmp_path),
                          "error importing 'interrupted': KeyboardInterrupt: half a deploy "
                          "(interrupted.py:1)")


def test_ctrl_c_during_check_config_is_an_interruption(tmp_path):
    # Not a broken app: the user's Ctrl-C while the app imports.
    mark = tmp_path / "importing"
    (tmp_path / "slowmod.py").write_text("import pathlib, time\npathlib.Path(%r).touch()\n"
                                         "time.sleep(30)\n" % str(mark))
    p = subprocess.Popen([sys.executable, "-m", "yimmo", "--check-config", "slowmod:app"],
                         cwd=tmp_path, env=clean_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_until(mark.exists, what="the import to start")
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=10)[1]
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert (p.returncode, err.strip()) == (130, "yimmo-wsgi: error: interrupted")


def test_check_config_opens_the_log_files(tmp_path):
    # What the start would refuse, --check-config refuses.
    missing = str(tmp_path / "no" / "such" / "dir" / "access.log")
    assert_one_line_error(run_cli("--check-config", "--access-logfile", missing, "hello:app"),
                          "cannot open log file %s: No such file or directory" % missing)
    ok = tmp_path / "error.log"
    assert run_cli("--check-config", "--error-logfile", str(ok), "hello:app").returncode == 0


@pytest.mark.parametrize("spec", ["hello", "hello:application", "hello:app", 'hello:create_app("hi")',
                                  "hello:create_app(greeting='hi')", "only_app",
                                  "hello : application"])
def test_good_app_check_config(spec):
    r = run_cli("--check-config", spec)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_factory_expression_is_served(server):
    y = server('hello:create_app("howdy")')
    status, _, body = y.get("/")
    assert status == 200 and body.startswith(b"howdy from ")


def test_cwd_is_on_sys_path(tmp_path):
    (tmp_path / "mine.py").write_text("def app(e, s):\n    return []\n")
    assert run_cli("--check-config", "mine:app", cwd=tmp_path).returncode == 0


# --- Config file --------------------------------------------------------------------------


@pytest.mark.parametrize("text,fragment", [
    ("workers = \n", "invalid TOML"),
    ("wrokers = 2\n", "unknown option 'wrokers'"),
    ("workers = 'two'\n", "workers: expected an integer"),
    ("workers = 0\n", "workers: must be >= 1"),
    ("bind = 8000\n", "bind: expected a string or a non-empty list of strings"),
    ("bind = ['ok:1', 'bad:x']\n", "bad port 'x'"),
    ("reuse_port = 'maybe'\n", "expected true or false"),
    ("version = true\n", "unknown option 'version'"),
    ("[section]\nworkers = 2\n", "unknown option 'section'"),
], ids=["syntax", "unknown-key", "type", "range", "bind-type", "bind-value", "bool", "cli-only", "table"])
def test_bad_config_file_is_one_line_exit_2(tmp_path, text, fragment):
    path = tmp_path / "y.toml"
    path.write_text(text)
    line = assert_one_line_error(run_cli("-c", str(path), "hello:application"), fragment)
    assert str(path) in line


def test_missing_config_file(tmp_path):
    assert_one_line_error(run_cli("-c", str(tmp_path / "nope.toml"), "hello"), "not found")


def test_config_file_from_environment(tmp_path):
    path = tmp_path / "y.toml"
    path.write_text('app = "hello:app"\nworkers = 3\n')
    r = run_cli("--print-config", env={"YIMMO_CONFIG": str(path)})
    assert r.returncode == 0
    assert 'app = "hello:app"  # config file' in r.stdout
    assert "workers = 3  # config file" in r.stdout


def test_print_config_round_trips_as_a_config_file(tmp_path):
    r = run_cli("--print-config", "-w", "3", "-b", "unix:/tmp/x.sock", "-b", "[::1]:9000",
                "--access-logformat", '%(h)s "%(r)s" %({x-id}i)s', "--reuse-port", "hello:app")
    assert r.returncode == 0, r.stderr
    parsed = tomllib.loads(r.stdout)
    assert parsed["workers"] == 3 and parsed["bind"] == ["unix:/tmp/x.sock", "[::1]:9000"]
    path = tmp_path / "y.toml"
    path.write_text(r.stdout)
    again = run_cli("--print-config", "-c", str(path))
    assert again.returncode == 0, again.stderr
    strip = lambda out: [l.split("  #")[0] for l in out.splitlines() if not l.startswith("#")]  # noqa: E731
    assert strip(again.stdout) == strip(r.stdout)
    # Defaults written out are accepted as they are (TLS ones without --certfile too).
    checked = run_cli("--check-config", "-c", str(path))
    assert checked.returncode == 0, checked.stderr


# --- Every option from every source -----------------------------------------------------

# name -> (command-line value, TOML value, environment value, resolved value)
SAMPLES = {
    "app": ("hello:app", "hello:app", "hello:app", "hello:app"),
    "bind": ("unix:/tmp/a.sock", ["127.0.0.1:1", "[::1]:2"], "127.0.0.1:1, fd://3",
             None),  # Resolved value depends on the source; checked below.
    "workers": ("3", 3, "3", 3),
    "threads": ("4", 4, "4", 4),
    "timeout": ("2.5", 2.5, "2.5", 2.5),
    "graceful_timeout": ("7", 7, "7", 7.0),
    "keepalive": ("1.5", 1.5, "1.5", 1.5),
    "header_timeout": ("3", 3, "3", 3.0),
    "body_timeout": ("4.5", 4.5, "4.5", 4.5),
    "send_timeout": ("6", 6, "6", 6.0),
    "worker_connections": ("50", 50, "50", 50),
    "read_size": ("4096", 4096, "4096", 4096),
    "ws_max_message": ("1000", 1000, "1000", 1000),
    "ws_idle_timeout": ("9", 9, "9", 9.0),
    "ws_ping_interval": ("2.5", 2.5, "2.5", 2.5),
    "ws_ping_timeout": ("4", 4, "4", 4.0),
    "ws_send_limit": ("5000", 5000, "5000", 5000),
    "ws_no_deflate": (None, True, "1", True),
    "send_high_water": ("65536", 65536, "65536", 65536),
    "busy_poll": ("0.0001", 0.0001, "0.0001", 0.0001),
    "preload": (None, True, "true", True),
    "log_level": ("WARNING", "warning", "Warning", "warning"),
    "error_logfile": ("/tmp/e.log", "/tmp/e.log", "/tmp/e.log", "/tmp/e.log"),
    "access_logfile": ("-", "-", "-", "-"),
    "access_logformat": ("%(h)s %(s)s", "%(h)s %(s)s", "%(h)s %(s)s", "%(h)s %(s)s"),
    "limit_request_line": ("100", 100, "100", 100),
    "limit_request_fields": ("10", 10, "10", 10),
    "limit_request_field_size": ("200", 200, "200", 200),
    "max_body_size": ("1000", 1000, "1000", 1000),
    "backlog": ("16", 16, "16", 16),
    "forwarded_allow_ips": ("10.0.0.0/8, ::1", "10.0.0.0/8, ::1", "10.0.0.0/8, ::1", "10.0.0.0/8, ::1"),
    "script_name": ("/app", "/app", "/app", "/app"),
    "reuse_port": (None, True, "1", True),
    "certfile": ("/c.pem", "/c.pem", "/c.pem", "/c.pem"),
    "keyfile": ("/k.pem", "/k.pem", "/k.pem", "/k.pem"),
    "keyfile_password": (None, "pw", "pw", "pw"),  # No flag: environment and file only.
    "ca_certs": ("/ca.pem", "/ca.pem", "/ca.pem", "/ca.pem"),
    "cert_reqs": ("2", 2, "required", "required"),
    "ciphers": ("ECDHE+AESGCM", "ECDHE+AESGCM", "ECDHE+AESGCM", "ECDHE+AESGCM"),
    "tls_min_version": ("1.3", "1.3", "1.3", "1.3"),
    "sni_cert": ("/a.pem,/a.key", ["/a.pem"], "/a.pem,/a.key /b.pem", None),
}
SETTABLE = [o for o in config.OPTIONS if o.name not in config.CLI_ONLY]


def test_samples_cover_every_option():
    assert set(SAMPLES) == {o.name for o in SETTABLE}


def _cli_args(o, value):
    if o.name == "app":
        return [value]
    if o.kind == "flag":
        return [o.flags[-1]]
    return [o.flags[-1], value]


def _expected(o, source):
    if o.name == "bind":
        return {"cli": ["unix:/tmp/a.sock"], "file": ["127.0.0.1:1", "[::1]:2"],
                "env": ["127.0.0.1:1", "fd://3"]}[source]
    if o.name == "sni_cert":
        return {"cli": ["/a.pem,/a.key"], "file": ["/a.pem"], "env": ["/a.pem,/a.key", "/b.pem"]}[source]
    return SAMPLES[o.name][3]


@pytest.mark.parametrize("o", SETTABLE, ids=[o.name for o in SETTABLE])
def test_each_option_from_each_source_and_precedence(o, tmp_path):
    cli_v, file_v, env_v, _ = SAMPLES[o.name]
    default = config.load([], environ={})
    path = tmp_path / "y.toml"
    path.write_text("%s = %s\n" % (o.name, config._toml_value(file_v)))

    if not o.no_flag:
        s = config.load(_cli_args(o, cli_v), environ={})
        assert (getattr(s, o.name), s.source(o.name)) == (_expected(o, "cli"), "command line")
    s = config.load(["-c", str(path)], environ={})
    assert (getattr(s, o.name), s.source(o.name)) == (_expected(o, "file"), "config file")
    s = config.load([], environ={o.env: env_v})
    assert (getattr(s, o.name), s.source(o.name)) == (_expected(o, "env"), "environment")
    # Environment beats the file.
    s = config.load(["-c", str(path)], environ={o.env: env_v})
    assert getattr(s, o.name) == _expected(o, "env")
    if o.kind != "flag" and not o.no_flag:
        # The command line beats both.
        s = config.load(_cli_args(o, cli_v) + ["-c", str(path)], environ={o.env: env_v})
        assert getattr(s, o.name) == _expected(o, "cli")
    # And nothing set means the default.
    assert default.source(o.name) == "default"


def test_hyphenated_file_keys(tmp_path):
    path = tmp_path / "y.toml"
    path.write_text("graceful-timeout = 3\nlimit-request-line = 100\n")
    s = config.load(["-c", str(path)], environ={})
    assert (s.graceful_timeout, s.limit_request_line) == (3.0, 100)


BAD_ENV = {
    "bind": "host:port", "workers": "0", "threads": "x", "timeout": "-1", "graceful_timeout": "x",
    "keepalive": "-0.5", "preload": "maybe", "log_level": "loud", "access_logformat": "%(",
    "limit_request_line": "0", "limit_request_fields": "0", "limit_request_field_size": "-3",
    "max_body_size": "big", "backlog": "0", "reuse_port": "2",
    "header_timeout": "0", "body_timeout": "-2", "send_timeout": "soon", "worker_connections": "0",
    "read_size": "0", "send_high_water": "-1", "busy_poll": "0.5",
    "ws_max_message": "0", "ws_idle_timeout": "0", "ws_ping_interval": "-1",
    "ws_ping_timeout": "never", "ws_send_limit": "0", "ws_no_deflate": "perhaps",
    "certfile": " ", "keyfile": " ", "ca_certs": " ", "cert_reqs": "sometimes", "ciphers": " ",
    "tls_min_version": "1.1", "sni_cert": "a.pem,",
    "forwarded_allow_ips": "10.0.0.300", "script_name": "/app/",
}


@pytest.mark.parametrize("name", sorted(BAD_ENV))
def test_bad_environment_value_names_the_variable(name):
    o = config.BY_NAME[name]
    with pytest.raises(config.ConfigError) as e:
        config.load(["hello"], environ={o.env: BAD_ENV[name]})
    assert str(e.value).startswith(o.env + ": ") and "\n" not in str(e.value)


def test_environment_through_the_real_cli():
    env = {"YIMMO_WORKERS": "3", "YIMMO_BIND": "127.0.0.1:1 unix:/tmp/x", "YIMMO_LOG_LEVEL": "debug",
           "YIMMO_PRELOAD": "yes", "YIMMO_APP": "hello:app", "YIMMO_TIMEOUT": "9"}
    r = run_cli("--print-config", "--timeout", "11", env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "workers = 3  # environment" in out
    assert 'bind = ["127.0.0.1:1", "unix:/tmp/x"]  # environment' in out
    assert 'log_level = "debug"  # environment' in out
    assert "preload = true  # environment" in out
    assert 'app = "hello:app"  # environment' in out
    assert "timeout = 11.0  # command line" in out
    r = run_cli("hello", env={"YIMMO_THREADS": "lots"})
    assert_one_line_error(r, "YIMMO_THREADS: expected an integer, got 'lots'")


def test_platform_defaults():
    s = config.load([], environ={"PORT": "5000", "WEB_CONCURRENCY": "4"})
    assert s.bind == ["0.0.0.0:5000"] and s.workers == 4 and s.source("bind") == "default"
    s = config.load([], environ={})
    assert s.bind == ["127.0.0.1:8000"] and s.workers == 1
    with pytest.raises(config.ConfigError, match="WEB_CONCURRENCY"):
        config.load([], environ={"WEB_CONCURRENCY": "many"})
    with pytest.raises(config.ConfigError, match="bad port"):
        config.load([], environ={"PORT": "http"})
    # A file or YIMMO_BIND beats $PORT.
    s = config.load([], environ={"PORT": "5000", "YIMMO_BIND": "127.0.0.1:1"})
    assert s.bind == ["127.0.0.1:1"]
    # Unused, they are not read: a bad one does not stop a server told otherwise.
    s = config.load(["-w", "2", "-b", "127.0.0.1:1"], environ={"WEB_CONCURRENCY": "many", "PORT": "http"})
    assert s.workers == 2 and s.bind == ["127.0.0.1:1"]
    s = config.load([], environ={"WEB_CONCURRENCY": "0", "YIMMO_WORKERS": "3"})
    assert s.workers == 3
    # gunicorn's variables for the proxies trusted and the mount point.
    s = config.load([], environ={})
    assert (s.forwarded_allow_ips, s.script_name) == ("127.0.0.1,::1", "")
    s = config.load([], environ={"FORWARDED_ALLOW_IPS": "*", "SCRIPT_NAME": "/app"})
    assert (s.forwarded_allow_ips, s.script_name) == ("*", "/app")


@pytest.mark.parametrize("spec,kind,detail", [
    ("127.0.0.1:8000", "tcp", ("127.0.0.1", 8000)),
    ("localhost", "tcp", ("localhost", 8000)),
    (":9000", "tcp", ("0.0.0.0", 9000)),
    ("[::1]:9000", "tcp", ("::1", 9000)),
    ("[::]", "tcp", ("::", 8000)),
    ("unix:/run/y.sock", "unix", "/run/y.sock"),
    ("unix:///run/y.sock", "unix", "/run/y.sock"),
    ("fd://3", "fd", 3),
])
def test_parse_bind(spec, kind, detail):
    b = config.parse_bind(spec)
    assert b.kind == kind
    got = {"tcp": (b.host, b.port), "unix": b.path, "fd": b.fd}[kind]
    assert got == detail


def test_options_table_documents_every_option():
    with open(APPS.parent.parent / "docs" / "wsgi.md") as f:
        doc = f.read()
    assert config.options_table() in doc, "regenerate the table: python -c 'from yimmo.config " \
                                          "import options_table; print(options_table())'"


# --- Options that reach the server --------------------------------------------------------


def test_limits_reach_the_server(server):
    y = server("--limit-request-line", "64", "--limit-request-fields", "3",
               "--limit-request-field-size", "50", "--max-body-size", "10", "hello:app")
    assert y.raw(b"GET /" + b"a" * 100 + b" HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 414")
    many = b"".join(b"X-%d: y\r\n" % i for i in range(5))
    assert y.raw(b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431")
    assert y.raw(b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"v" * 80 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
    assert y.raw(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world").startswith(b"HTTP/1.1 413")
    assert y.get("/")[0] == 200


def test_keep_alive_closes_idle_connections(server):
    import time
    y = server("--keep-alive", "0.3", "hello:app")
    with socket.create_connection((y.host, y.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        t0 = time.monotonic()
        data = b""
        while chunk := s.recv(4096):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        assert 0.2 < time.monotonic() - t0 < 3


def test_keep_alive_0_closes_after_each_response(server):
    # gunicorn's spelling for "no keep-alive".
    y = server("--keep-alive", "0", "hello:app")
    with socket.create_connection((y.host, y.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.count(b"HTTP/1.1 200") == 1 and b"\r\nConnection: close\r\n" in data


def test_access_log_format_atoms(server):
    fmt = ('%(h)s|%(l)s|%(u)s|%(r)s|%(m)s|%(U)s|%(q)s|%(H)s|%(s)s|%(B)s|%(b)s|%(f)s|%(a)s|'
           '%(T)s|%(M)s|%(D)s|%(L)s|%(p)s|%({x-req}i)s|%({content-type}o)s|%({REQUEST_METHOD}e)s|'
           '%({x-absent}i)s|%(t)s')
    y = server("--access-logfile", "-", "--access-logformat", fmt, "-w", "1", "hello:app")
    status, headers, body = y.get("/p/a?x=1", headers={
        "X-Req": "abc", "Referer": "http://r/", "User-Agent": "ua/1",
        "Authorization": "Basic dXNlcjpwdw=="})
    pid = int(headers["X-Pid"])
    y.wait_log(r"\|GET\|", lines=y.out_lines)
    fields = [l for l in y.out_lines if "|GET|" in l][0].split("|")
    assert fields[:13] == ["127.0.0.1", "-", "user", "GET /p/a?x=1 HTTP/1.1", "GET", "/p/a", "x=1",
                           "HTTP/1.1", "200", str(len(body)), str(len(body)), "http://r/", "ua/1"]
    assert fields[13] == "0" and fields[14].isdigit() and fields[15].isdigit()
    assert re.fullmatch(r"\d+\.\d{6}", fields[16])
    assert fields[17:22] == ["<%d>" % pid, "abc", "text/plain", "GET", "-"]
    assert re.fullmatch(r"\[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\]", fields[22])


def test_default_access_log_format(server):
    y = server("--access-logfile", "-", "hello:app")
    y.get("/x?y=1")
    line = y.wait_log(r"GET /x", lines=y.out_lines)[0].string
    assert re.fullmatch(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                        r'"GET /x\?y=1 HTTP/1\.1" 200 \d+ "-" "-"', line), line


def test_access_log_escapes_what_a_client_sends(server):
    """A client cannot close a quoted field or start a line of its own: '"'
    is escaped as gunicorn escapes it, '\\' and control characters as Apache
    does. The Basic user name is UTF-8."""
    y = server("--access-logfile", "-", "hello:app")
    user = 'jösé\n10.9.9.9 - admin "POST /x HTTP/1.1" 200 2'
    auth = "Basic " + base64.b64encode((user + ":pw").encode()).decode()
    y.get("/e", headers={"Referer": '-" "Spoofed/1.0', "User-Agent": "ua\x85\\",
                         "Authorization": auth})
    line = y.wait_log(r"GET /e", lines=y.out_lines)[0].string
    assert re.fullmatch(r'127\.0\.0\.1 - jösé\\x0a10\.9\.9\.9 - admin \\"POST /x HTTP/1\.1\\" 200 2 '
                        r'\[[^]]+\] "GET /e HTTP/1\.1" 200 \d+ "-\\" \\"Spoofed/1\.0" "ua\\x85\\\\"', line), line
    assert [l for l in y.out_lines if "10.9.9.9" in l] == [line]


def test_access_log_numeric_atoms_and_empty_values(server):
    # As gunicorn: B T M D are numbers (%(D)d), an empty value prints empty, a missing one '-'.
    fmt = "<%(D)d %(T).3f %(B)05d [%(q)s] [%({x-empty}i)s] [%({x-absent}i)s]>"
    y = server("--access-logfile", "-", "--access-logformat", fmt, "hello:app")
    y.get("/n", headers={"X-Empty": ""})
    y.wait_log(r"^<\d+ \d\.\d{3} \d{5} \[\] \[\] \[-\]>$", lines=y.out_lines)


def test_access_log_to_a_closed_stdout_is_a_start_up_error():
    r = subprocess.run(["sh", "-c", 'exec "$0" -m yimmo --check-config --access-logfile - hello:app >&-',
                        sys.executable], cwd=str(APPS), env=clean_env(), capture_output=True,
                       text=True, timeout=60)
    assert_one_line_error(r, "cannot open log file -: standard output is closed")


def test_no_access_log_by_default(server):
    y = server("hello:app")
    y.get("/x")
    y.signal(15)
    y.wait_exit()
    assert y.out_lines == []


def test_log_level_warning_hides_info_lines(server, tmp_path):
    path = str(tmp_path / "y.sock")
    y = server("--log-level", "warning", "hello:app", bind="unix:" + path, debug=False, wait=False)

    def answers():
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(path)
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                return s.recv(100).startswith(b"HTTP/1.1 200")
        except OSError:
            return False
    wait_until(answers, what="the server to answer")
    y.signal(15)
    assert y.wait_exit() == 0
    assert y.stderr == ""


def test_script_name_and_forwarded_scheme(server):
    # gunicorn's defaults: $SCRIPT_NAME, and proxies on 127.0.0.1 and ::1 trusted.
    y = server("hello:describe", env={"SCRIPT_NAME": "/app"})
    assert y.get("/app/x", headers={"X-Forwarded-Proto": "https"})[2] == b"/app|/x|https"
    assert y.get("/app")[2] == b"/app||http"
    assert y.get("/elsewhere")[2] == b"|/elsewhere|http"    # outside it: no SCRIPT_NAME


def test_the_worker_stays_at_its_connection_limit(server):
    """--worker-connections 1: the worker stops accepting while its one
    connection is open; once, its loop then had nothing left to watch, and
    the worker exited instead of answering."""
    y = server("--worker-connections", "1", "hello:app")
    pids = {y.get("/")[1]["X-Pid"] for _ in range(4)}
    assert len(pids) == 1
    assert "Worker exiting" not in y.stderr


def test_out_of_descriptors_is_logged_once_and_recovers(server):
    """At RLIMIT_NOFILE the worker stops accepting for 100 ms at a time
    (no spinning); the error is logged once per shortage, not ten times a
    second, and new connections are served once descriptors are free."""
    y = server("hello:app", nofile=64)
    held = []
    try:
        for _ in range(80):     # past the worker's limit; the rest wait in the backlog
            held.append(socket.create_connection((y.host, y.port), timeout=5))
        y.wait_log(r"\[ERROR\] accept: Too many open files; retrying every 100 ms")
        # Several retries later, still one ERROR line.
        y.wait_log(r"\[DEBUG\] accept: Too many open files", count=3)
        assert len(y.matches(re.compile(r"\[ERROR\] accept:"))) == 1, y.stderr
    finally:
        for s in held:
            s.close()
    y.wait_log(r"accept: descriptors available again")
    assert y.get("/")[0] == 200


def test_forwarded_allow_ips_none_trusted(server):
    y = server("--forwarded-allow-ips", "10.0.0.0/8", "hello:describe")
    assert y.get("/x", headers={"X-Forwarded-Proto": "https"})[2] == b"|/x|http"


def test_a_unix_socket_peer_is_a_trusted_proxy(server, tmp_path):
    path = str(tmp_path / "y.sock")
    server("--forwarded-allow-ips", "10.0.0.0/8", "hello:describe", bind="unix:" + path)
    data = unix_request(path, b"GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n"
                              b"Connection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n|/x|https")


def test_wsgi_errors_goes_to_the_error_log(server, tmp_path):
    errlog = tmp_path / "err.log"
    y = server("--error-logfile", str(errlog), "hello:describe", wait=False)
    wait_until(lambda: errlog.exists() and "Worker ready" in errlog.read_text(), what="a ready worker")
    m = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", errlog.read_text())
    y.host, y.port = "127.0.0.1", int(m.group(1))
    assert y.get("/errors")[0] == 200
    wait_until(lambda: "a line for wsgi.errors" in errlog.read_text(), what="the line in the log")
    assert "a line for wsgi.errors" not in y.stderr


def test_error_logfile(server, tmp_path):
    errlog = tmp_path / "err.log"
    y = server("--error-logfile", str(errlog), "hello:app", wait=False)
    wait_until(lambda: errlog.exists() and "Worker ready" in errlog.read_text(), what="a ready worker")
    y.signal(15)
    assert y.wait_exit() == 0
    text = errlog.read_text()
    assert "Starting yimmo" in text and "Shutting down: Master" in text
    assert y.stderr == ""
