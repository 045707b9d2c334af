/*
 * yimmo.Server: the engine behind a Python handler. The loop runs with the
 * GIL released; the dispatch hook takes it once per loop iteration for all
 * the requests that became ready.
 */
#include "py/py_internal.h"
#include "yimmo/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

/* --- Hooks the engine calls ----------------------------------------------- */

/* Threads start without the GIL in this sense; the thread that imports the
 * module and calls into it holds it whenever it runs Python code. */
_Thread_local int ymo__py_gil_held = 1;

void ymo__py_server_drain(YmoServerObject *self)
{
    /* Decref'ing may run arbitrary code that parks more: loop. */
    for (;;) {
        pthread_mutex_lock(&self->garbage_lock);
        PyObject *o = self->ngarbage > 0 ? self->garbage[--self->ngarbage] : NULL;
        pthread_mutex_unlock(&self->garbage_lock);
        if (o == NULL)
            return;
        Py_DECREF(o);
    }
}

static void hook_release(ymo_server_t *s, void *ref)
{
    YmoServerObject *self = (YmoServerObject *)s->data;
    if (ymo__py_gil_held) {
        Py_DECREF((PyObject *)ref);
        return;
    }
    pthread_mutex_lock(&self->garbage_lock);
    if (self->ngarbage == self->capgarbage) {
        size_t ncap = self->capgarbage ? self->capgarbage * 2 : 64;
        PyObject **ng = realloc(self->garbage, ncap * sizeof(*ng));
        if (ng == NULL) {
            /* Leaking one reference beats crashing without the GIL. */
            pthread_mutex_unlock(&self->garbage_lock);
            return;
        }
        self->garbage = ng;
        self->capgarbage = ncap;
    }
    self->garbage[self->ngarbage++] = (PyObject *)ref;
    /* Worker threads drain as they take requests; the loop only takes the
     * GIL for this when much has piled up. */
    if (self->nthreads == 0 || self->ngarbage > 256)
        s->dispatch_wanted = 1;
    pthread_mutex_unlock(&self->garbage_lock);
}

static void hook_log(ymo_server_t *s, int level, const char *msg)
{
    YmoServerObject *self = (YmoServerObject *)s->data;
    PyGILState_STATE g = PyGILState_Ensure();
    ymo__py_log(self->st, level, "%s", msg);
    PyGILState_Release(g);
}

static void take_gil(YmoServerObject *self)
{
    PyEval_RestoreThread(self->tstate);
    ymo__py_gil_held = 1;
}

static void drop_gil(YmoServerObject *self)
{
    ymo__py_gil_held = 0;
    self->tstate = PyEval_SaveThread();
}

static size_t parked_count(YmoServerObject *self)
{
    pthread_mutex_lock(&self->garbage_lock);
    size_t n = self->ngarbage;
    pthread_mutex_unlock(&self->garbage_lock);
    return n;
}

/* The loop is about to sleep with references parked by hook_release (bodies
 * written while flushing, without the GIL): they are let go a moment later
 * if no request (whose dispatch drains them) came meanwhile, so an idle
 * server does not hold its last responses in memory. Not at once: under
 * load the loop would take the GIL again on nearly every pass. */
static void hook_idle(ymo_server_t *s)
{
    YmoServerObject *self = (YmoServerObject *)s->data;
    if (ev_is_active(&self->drain) || parked_count(self) == 0)
        return;
    ev_timer_set(&self->drain, 0.2, 0.0);
    ev_timer_start(s->loop, &self->drain);
    ev_unref(s->loop);          /* it never keeps run() going */
}

static void on_drain_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    YmoServerObject *self = (YmoServerObject *)((char *)w - offsetof(YmoServerObject, drain));
    ev_ref(loop);               /* the one-shot timer is stopping */
    if (parked_count(self) == 0)
        return;
    take_gil(self);
    ymo__py_server_drain(self);
    drop_gil(self);
    if (self->nthreads == 0)
        self->srv.dispatch_wanted = 0;  /* drained: no GIL needed for it at the next pass */
}

static void hook_dispatch(ymo_server_t *s)
{
    YmoServerObject *self = (YmoServerObject *)s->data;
    if (self->nthreads > 0) {
        /* Requests go to the worker threads: no GIL needed for that. */
        ymo_server_run_ready(s);
        if (s->dispatch_wanted) {
            s->dispatch_wanted = 0;
            take_gil(self);
            ymo__py_server_drain(self);
            drop_gil(self);
        }
        return;
    }
    take_gil(self);
    s->dispatch_wanted = 0;
    ymo__py_server_drain(self);
    ymo_server_run_ready(s);
    drop_gil(self);
}

/* Loop thread: queue a request for the worker threads. */
static void hook_submit(ymo_server_t *s, ymo_conn_t *c)
{
    YmoServerObject *self = (YmoServerObject *)s->data;
    pthread_mutex_lock(&self->wq_lock);
    c->next_ready = NULL;
    *self->wq_tail = c;
    self->wq_tail = &c->next_ready;
    pthread_cond_signal(&self->wq_cond);
    pthread_mutex_unlock(&self->wq_lock);
}

/* A worker thread's body: take requests until the server stops. */
static PyObject *server_work(YmoServerObject *self, PyObject *unused)
{
    for (;;) {
        ymo_conn_t *c;
        ymo__py_gil_held = 0;
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&self->wq_lock);
        while (self->wq_head == NULL && !self->wq_shutdown)
            pthread_cond_wait(&self->wq_cond, &self->wq_lock);
        c = self->wq_head;
        if (c != NULL) {
            self->wq_head = c->next_ready;
            if (self->wq_head == NULL)
                self->wq_tail = &self->wq_head;
            c->next_ready = NULL;
        }
        pthread_mutex_unlock(&self->wq_lock);
        Py_END_ALLOW_THREADS
        ymo__py_gil_held = 1;
        if (c == NULL)
            Py_RETURN_NONE;
        if (ymo_server_stop_forced(&self->srv)) {
            /* Queued, and the stop's time is up: closed, not started
             * (its answer could not go out anyway). */
            ymo_server_checkin(&self->srv, c);
            continue;
        }
        ymo__py_server_drain(self);
        if (self->wsgi)
            ymo__py_wsgi_run(self, c);
        else
            ymo__py_exchange_run(self, c);
        ymo_server_checkin(&self->srv, c);
    }
}

static void hook_resume(ymo_server_t *s, ymo_conn_t *c)
{
    ymo__py_wsgi_resume((YmoServerObject *)s->data, c);
}

static void hook_request(ymo_server_t *s, ymo_conn_t *c)
{
    YmoServerObject *self = (YmoServerObject *)s->data;
    if (self->wsgi)
        ymo__py_wsgi_run(self, c);
    else
        ymo__py_exchange_run(self, c);
}

/* Python's own signal handler writes to the wakeup fd; its Python-level
 * handlers (KeyboardInterrupt for Ctrl-C) run here, on the loop thread. */
static void on_signal(struct ev_loop *loop, ev_io *w, int revents)
{
    YmoServerObject *self = (YmoServerObject *)((char *)w - offsetof(YmoServerObject, sigio));
    char buf[64];
    while (read(self->sigfd[0], buf, sizeof(buf)) > 0)
        ;
    take_gil(self);
    if (PyErr_CheckSignals() < 0) {
        if (self->parked == NULL) {
            self->parked = PyErr_GetRaisedException();
            /* Finish what is in flight, briefly. */
            ymo_server_stop(&self->srv, 2.0);
        } else {
            /* A second interrupt: stop now. */
            PyErr_Clear();
            ymo_server_stop(&self->srv, 0.0);
        }
    }
    drop_gil(self);
}

void ymo__py_app_failed(YmoServerObject *srv, ymo_conn_t *c, const char *what)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        if (srv->parked == NULL)
            srv->parked = PyErr_GetRaisedException();
        else
            PyErr_Clear();
        ymo_server_stop(&srv->srv, 2.0);
    } else if (c != NULL && (c->flags & YMO_CONN_CLOSED)
               && PyErr_ExceptionMatches(PyExc_ConnectionError)) {
        PyErr_Clear();      /* the client left; nothing to report */
    } else {
        ymo__py_log_exception(srv->st, what);
    }
}

static void on_tick_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    YmoServerObject *self = (YmoServerObject *)((char *)w - offsetof(YmoServerObject, tick));
    take_gil(self);
    PyObject *r = PyObject_CallNoArgs(self->on_tick);
    if (r == NULL)
        ymo__py_app_failed(self, NULL, "exception in on_tick");
    Py_XDECREF(r);
    drop_gil(self);
}

/* --- Construction ---------------------------------------------------------- */

/* A number of seconds into *v: TypeError naming it for anything else (a
 * bool too: True is no duration). */
static int seconds_arg(PyObject *o, const char *name, double *v)
{
    *v = PyBool_Check(o) ? -1.0 : PyFloat_AsDouble(o);
    if (PyBool_Check(o) || (*v == -1.0 && PyErr_Occurred())) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a number", name);
        return -1;
    }
    return 0;
}

/* A number of seconds > 0 (>= 0 with zero_ok). */
static int set_seconds(PyObject *o, const char *name, int zero_ok, double *out)
{
    double v;
    if (o == NULL || o == Py_None)
        return 0;
    if (seconds_arg(o, name, &v) < 0)
        return -1;
    if (zero_ok ? !(v >= 0) : !(v > 0)) {
        PyErr_Format(PyExc_ValueError, "%s must be %s, not %R", name, zero_ok ? ">= 0" : "> 0", o);
        return -1;
    }
    *out = v;
    return 0;
}

/* busy_poll: seconds, 0 (off) to 0.01; a value this small is what it is for. */
static int set_busy_poll(PyObject *o, double *out)
{
    double v;
    if (o == NULL || o == Py_None)
        return 0;
    if (seconds_arg(o, "busy_poll", &v) < 0)
        return -1;
    if (!(v >= 0 && v <= 0.01)) {
        PyErr_Format(PyExc_ValueError, "busy_poll must be between 0 and 0.01 seconds, not %R", o);
        return -1;
    }
    *out = v;
    return 0;
}

int ymo__py_uint_arg(PyObject *o, const char *name, unsigned long long min,
                     unsigned long long max, unsigned long long *out)
{
    if (o == NULL || o == Py_None)
        return 0;
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", name, Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long sv = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (sv == -1 && PyErr_Occurred())
        return -1;
    unsigned long long v = (unsigned long long)sv;
    if (overflow > 0) {
        v = PyLong_AsUnsignedLongLong(o);      /* up to 2**64 - 1 */
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            overflow = -1;
        }
    }
    if (overflow < 0 || (overflow == 0 && sv < 0) || v < min || v > max) {
        PyErr_Format(PyExc_ValueError, "%s must be in %llu..%llu, not %R", name, min, max, o);
        return -1;
    }
    *out = v;
    return 0;
}

static int set_uint(PyObject *o, const char *name, unsigned long long max, unsigned long long *out)
{
    return ymo__py_uint_arg(o, name, 1, max, out);
}

static PyObject *listen_error(int err, PyObject *where)
{
    PyObject *e = PyObject_CallFunction(PyExc_OSError, "isO", -err, strerror(-err), where);
    if (e != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(e), e);
        Py_DECREF(e);
    }
    return NULL;
}

/* One listening socket: a socket object or fd, or (socket, use_tls). */
static int take_socket(YmoServerObject *self, PyObject *sock, int tls)
{
    int fd;
    unsigned flags = tls ? YMO_LISTEN_TLS : 0;
    if (PyTuple_Check(sock)) {
        if (PyTuple_GET_SIZE(sock) != 2) {
            PyErr_SetString(PyExc_TypeError, "sock entries are sockets or (socket, use_tls) pairs");
            return -1;
        }
        int want = PyObject_IsTrue(PyTuple_GET_ITEM(sock, 1));
        if (want < 0)
            return -1;
        if (want && !tls) {
            PyErr_SetString(PyExc_ValueError, "a TLS listener needs tls={...} settings");
            return -1;
        }
        flags = want ? YMO_LISTEN_TLS : 0;
        sock = PyTuple_GET_ITEM(sock, 0);   /* borrowed */
    }
    long lfd;
    if (PyLong_Check(sock)) {
        int overflow;
        lfd = PyLong_AsLongAndOverflow(sock, &overflow);
        if (overflow)
            lfd = -1;
    } else {
        PyObject *r = PyObject_CallMethod(sock, "fileno", NULL);
        if (r == NULL) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "sock must be a socket object or a file descriptor, not %.100s",
                         Py_TYPE(sock)->tp_name);
            return -1;
        }
        int overflow;
        lfd = PyLong_Check(r) ? PyLong_AsLongAndOverflow(r, &overflow) : -1;
        if (PyLong_Check(r) && overflow)
            lfd = -1;
        Py_DECREF(r);
    }
    if (lfd < 0 || lfd > 0x7fffffff) {
        PyErr_Format(PyExc_ValueError, "sock must be an open socket (fd %ld)", lfd);
        return -1;
    }
    fd = (int)lfd;
    /* A duplicate: the caller's object keeps (and closes) its own. */
    int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (dfd < 0 && errno == EBADF) {
        PyErr_Format(PyExc_ValueError, "sock must be an open socket (fd %d is not open)", fd);
        return -1;
    }
    if (dfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int r = ymo_server_listen_fd(&self->srv, dfd, flags);
    if (r < 0) {
        close(dfd);
        if (r == -ENOTSOCK) {
            PyErr_SetString(PyExc_ValueError, "sock must be a stream socket");
            return -1;
        }
        if (r == -EDESTADDRREQ) {
            PyErr_SetString(PyExc_ValueError, "sock must be bound to an address (listen() on an "
                                              "unbound socket would pick every interface)");
            return -1;
        }
        PyObject *w = PyUnicode_FromFormat("fd %d", fd);
        listen_error(r, w);
        Py_XDECREF(w);
        return -1;
    }
    return 0;
}

static int take_sockets(YmoServerObject *self, PyObject *sock, int tls)
{
    if (PyList_Check(sock) || PyTuple_Check(sock)) {
        PyObject *seq = PySequence_Fast(sock, "sock");
        if (seq == NULL)
            return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        if (n == 0) {
            Py_DECREF(seq);
            PyErr_SetString(PyExc_ValueError, "sock must not be an empty list");
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if (take_socket(self, PySequence_Fast_GET_ITEM(seq, i), tls) < 0) {
                Py_DECREF(seq);
                return -1;
            }
        }
        Py_DECREF(seq);
        return 0;
    }
    return take_socket(self, sock, tls);
}

/* SERVER_NAME and SERVER_PORT when a request has no Host. */
static int cache_server_name(YmoServerObject *self)
{
    struct sockaddr_storage ss;
    socklen_t len;
    char host[INET6_ADDRSTRLEN] = "localhost";
    int port = 0;
    if (ymo_server_address(&self->srv, &ss, &len) == 0 && ymo_sockaddr_host(&ss, host, &port) == 0)
        strcpy(host, "localhost");
    self->server_name = PyUnicode_FromString(host);
    self->server_port = PyUnicode_FromFormat("%d", port);
    return self->server_name && self->server_port ? 0 : -1;
}

static PyObject *server_new_common(PyTypeObject *type, PyObject *args, PyObject *kw, int wsgi)
{
    static char *kwlist[] = {
        "handler", "host", "port", "sock", "backlog", "reuse_port",
        "keepalive_timeout", "header_timeout", "body_timeout", "send_timeout",
        "max_body_size", "max_request_line", "max_header_size", "max_header_bytes",
        "max_headers", "on_tick", "tick_interval", "max_connections",
        "websocket", "ws_max_message", "ws_idle_timeout", "ws_send_limit", "ws_deflate",
        "read_size", "send_high_water", "ws_ping_interval", "ws_ping_timeout", "tls",
        "tune_malloc", "busy_poll",
        /* WSGIServer only, from here, apart from threads. */
        "url_scheme", "script_name", "multiprocess", "access_log", "threads",
        "body_buffer_size", "errors", "forwarded_allow_ips", NULL,
    };
    PyObject *handler, *host_o = NULL, *port_o = NULL, *sock = Py_None, *backlog_o = NULL;
    int reuse_port = 0;
    PyObject *ka = NULL, *ht = NULL, *bt = NULL, *st_o = NULL;
    PyObject *mb = NULL, *mrl = NULL, *mhs = NULL, *mhb = NULL, *mh = NULL;
    PyObject *on_tick = Py_None, *tick_o = NULL, *maxconn = NULL;
    PyObject *ws_routes = Py_None, *ws_max = NULL, *ws_idle = NULL, *ws_limit = NULL;
    int ws_deflate = 1;
    PyObject *read_size = NULL, *high_water = NULL, *ws_ping = NULL, *ws_ping_to = NULL;
    PyObject *tls_o = Py_None;
    int tune_malloc = 1;
    PyObject *busy_poll = NULL;
    PyObject *url_scheme = NULL, *script_name = NULL, *multiprocess = NULL;
    PyObject *access_log = NULL, *threads = NULL, *bbs = NULL, *errors = NULL, *proxies = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$OOOOpOOOOOOOOOOOOOOOOpOOOOOpOOOOOOOOO", kwlist, &handler,
                                     &host_o, &port_o, &sock, &backlog_o, &reuse_port, &ka, &ht,
                                     &bt, &st_o, &mb, &mrl, &mhs, &mhb, &mh, &on_tick, &tick_o,
                                     &maxconn, &ws_routes, &ws_max, &ws_idle, &ws_limit, &ws_deflate,
                                     &read_size, &high_water, &ws_ping, &ws_ping_to, &tls_o,
                                     &tune_malloc, &busy_poll, &url_scheme, &script_name, &multiprocess, &access_log,
                                     &threads, &bbs, &errors, &proxies))
        return NULL;
    if (!wsgi && (url_scheme || script_name || multiprocess || access_log || bbs || errors
                  || proxies)) {
        PyErr_SetString(PyExc_TypeError,
                        "url_scheme, script_name, multiprocess, access_log, body_buffer_size, "
                        "errors and forwarded_allow_ips are WSGIServer arguments");
        return NULL;
    }
    const char *what = wsgi ? "app" : "handler";
    if (!PyCallable_Check(handler)) {
        PyErr_Format(PyExc_TypeError, "%s must be callable, not %.100s", what,
                     Py_TYPE(handler)->tp_name);
        return NULL;
    }
    if (on_tick != Py_None && !PyCallable_Check(on_tick)) {
        PyErr_SetString(PyExc_TypeError, "on_tick must be callable or None");
        return NULL;
    }
    if (access_log != NULL && access_log != Py_None && !PyCallable_Check(access_log)) {
        PyErr_SetString(PyExc_TypeError, "access_log must be callable or None");
        return NULL;
    }
    unsigned long long nthreads = 0;
    if (ymo__py_uint_arg(threads, "threads", 0, 1024, &nthreads) < 0)
        return NULL;
    for (int i = 0; i < 2; i++) {
        PyObject *o = i ? script_name : url_scheme;
        if (o != NULL && !PyUnicode_Check(o)) {
            PyErr_Format(PyExc_TypeError, "%s must be a str", i ? "script_name" : "url_scheme");
            return NULL;
        }
    }
    const char *host = "127.0.0.1";
    if (host_o != NULL && host_o != Py_None) {
        if (!PyUnicode_Check(host_o)) {
            PyErr_Format(PyExc_TypeError, "host must be a str, not %.100s", Py_TYPE(host_o)->tp_name);
            return NULL;
        }
        Py_ssize_t hlen;
        host = PyUnicode_AsUTF8AndSize(host_o, &hlen);
        if (host == NULL)
            return NULL;
        if ((size_t)hlen != strlen(host)) {
            PyErr_SetString(PyExc_ValueError, "host must not contain NUL");
            return NULL;
        }
    }
    unsigned long long port = 8000;
    if (ymo__py_uint_arg(port_o, "port", 0, 65535, &port) < 0)
        return NULL;

    ymo_server_config_t cfg;
    ymo_server_config_default(&cfg);
    double tick = 1.0;
    unsigned long long v;
    if (set_seconds(ka, "keepalive_timeout", 1, &cfg.keepalive_timeout) < 0
        || set_seconds(ht, "header_timeout", 0, &cfg.header_timeout) < 0
        || set_seconds(bt, "body_timeout", 0, &cfg.body_timeout) < 0
        || set_seconds(st_o, "send_timeout", 0, &cfg.send_timeout) < 0
        || set_seconds(tick_o, "tick_interval", 0, &tick) < 0
        || set_busy_poll(busy_poll, &cfg.busy_poll) < 0)
        return NULL;
    v = (unsigned long long)cfg.backlog;
    if (set_uint(backlog_o, "backlog", 65535, &v) < 0)
        return NULL;
    cfg.backlog = (int)v;
    v = cfg.http.max_body;
    if (set_uint(mb, "max_body_size", 1ull << 62, &v) < 0)
        return NULL;
    cfg.http.max_body = v;
    v = cfg.http.max_request_line;
    if (set_uint(mrl, "max_request_line", 1u << 20, &v) < 0)
        return NULL;
    cfg.http.max_request_line = (uint32_t)v;
    v = cfg.http.max_field_size;
    if (set_uint(mhs, "max_header_size", 1u << 20, &v) < 0)
        return NULL;
    cfg.http.max_field_size = (uint32_t)v;
    v = cfg.http.max_header_bytes;
    if (set_uint(mhb, "max_header_bytes", 1u << 24, &v) < 0)
        return NULL;
    cfg.http.max_header_bytes = (uint32_t)v;
    v = cfg.http.max_headers;
    if (set_uint(mh, "max_headers", 10000, &v) < 0)
        return NULL;
    cfg.http.max_headers = (uint32_t)v;
    v = 0;
    if (maxconn != Py_None && set_uint(maxconn, "max_connections", 1u << 24, &v) < 0)
        return NULL;
    cfg.max_connections = (uint32_t)v;
    v = cfg.read_size;
    if (set_uint(read_size, "read_size", 1u << 24, &v) < 0)
        return NULL;
    cfg.read_size = (size_t)v;
    v = cfg.output_high_water;
    if (set_uint(high_water, "send_high_water", 1ull << 32, &v) < 0)
        return NULL;
    cfg.output_high_water = (size_t)v;
    if (ws_routes != Py_None && !PyDict_Check(ws_routes)) {
        PyErr_SetString(PyExc_TypeError,
                        "websocket must be a dict of {path: handler object}");
        return NULL;
    }
    if (ws_routes != Py_None) {
        /* A key that no request path can equal would never match: say so. */
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(ws_routes, &pos, &key, &value)) {
            if (!PyUnicode_Check(key)) {
                PyErr_Format(PyExc_TypeError, "websocket paths are str, not %.100s",
                             Py_TYPE(key)->tp_name);
                return NULL;
            }
            if (PyUnicode_GET_LENGTH(key) == 0 || PyUnicode_READ_CHAR(key, 0) != '/') {
                PyErr_Format(PyExc_ValueError, "websocket path %R does not start with '/'", key);
                return NULL;
            }
        }
    }
    if (ws_routes != Py_None && PyDict_GET_SIZE(ws_routes) > 0 && nthreads > 0) {
        /* The callbacks run on the loop thread, as the connections do; a
         * handler on a worker thread could not use them safely. */
        PyErr_SetString(PyExc_ValueError,
                        "websocket= callbacks run on the loop thread: they take threads=0 "
                        "(for WebSockets on worker threads, use WSGIServer(threads=N) and "
                        "environ['yimmo.websocket'])");
        return NULL;
    }
    ymo_ws_config_t wscfg = {
        .max_message = 16u << 20, .idle_timeout = 300.0, .send_limit = 16u << 20,
        .deflate = ws_deflate,
    };
    v = wscfg.max_message;
    if (set_uint(ws_max, "ws_max_message", 1ull << 40, &v) < 0)
        return NULL;
    wscfg.max_message = v;
    v = wscfg.send_limit;
    if (set_uint(ws_limit, "ws_send_limit", 1ull << 40, &v) < 0)
        return NULL;
    wscfg.send_limit = (size_t)v;
    if (set_seconds(ws_idle, "ws_idle_timeout", 0, &wscfg.idle_timeout) < 0)
        return NULL;
    wscfg.ping_timeout = 20.0;
    /* 0 turns keep-alive pings off. */
    if (set_seconds(ws_ping, "ws_ping_interval", 1, &wscfg.ping_interval) < 0)
        return NULL;
    if (set_seconds(ws_ping_to, "ws_ping_timeout", 0, &wscfg.ping_timeout) < 0)
        return NULL;
    /* The native handler gets whole bodies (up to max_body_size) without
     * waiting on the loop; a WSGI app streams what exceeds the buffer. */
    v = wsgi ? 65536 : cfg.http.max_body;
    if (set_uint(bbs, "body_buffer_size", 1ull << 62, &v) < 0)
        return NULL;
    cfg.body_buffer_max = v;

    YmoServerObject *self = (YmoServerObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->st = ymo__py_state_from_type(type);
    self->handler = Py_NewRef(handler);
    self->on_tick = on_tick != Py_None ? Py_NewRef(on_tick) : NULL;
    self->sigfd[0] = self->sigfd[1] = -1;
    self->wsgi = wsgi;
    self->nthreads = (int)nthreads;
    self->tune_malloc = tune_malloc;
    self->ws_config = wscfg;
    self->ws_routes = ws_routes != Py_None ? PyDict_Copy(ws_routes) : NULL;
    pthread_mutex_init(&self->garbage_lock, NULL);
    pthread_mutex_init(&self->wq_lock, NULL);
    pthread_cond_init(&self->wq_cond, NULL);
    self->wq_tail = &self->wq_head;
    self->wq_shutdown = 1;     /* until run() starts the workers: _work() returns */
    ymo_server_hooks_t hooks = {
        .dispatch = hook_dispatch,
        .on_request = hook_request,
        .release = hook_release,
        .log = hook_log,
        .submit = nthreads > 0 ? hook_submit : NULL,
        .resume = hook_resume,
        .idle = hook_idle,
    };
    ymo__py_ws_hooks(&hooks);
    int r = ymo_server_init(&self->srv, &cfg, &hooks, self);
    if (r < 0) {
        PyErr_SetString(PyExc_OSError, "could not create the event loop");
        goto error;
    }
    ev_init(&self->tick, on_tick_timer);
    self->tick.repeat = tick;
    ev_init(&self->drain, on_drain_timer);
    if (tls_o != Py_None) {
        ymo_tls_t *t;
        if (ymo__py_tls_load(tls_o, &t) < 0)
            goto error;
        ymo_server_set_tls(&self->srv, t);
        ymo_tls_unref(t);
    }
    if (sock != Py_None) {
        if (take_sockets(self, sock, tls_o != Py_None) < 0)
            goto error;
    } else {
        r = ymo_server_listen(&self->srv, host, (int)port,
                              (reuse_port ? YMO_LISTEN_REUSEPORT : 0)
                                  | (tls_o != Py_None ? YMO_LISTEN_TLS : 0));
        if (r < 0) {
            PyObject *w = strchr(host, ':') ? PyUnicode_FromFormat("[%s]:%d", host, (int)port)
                                            : PyUnicode_FromFormat("%s:%d", host, (int)port);
            listen_error(r, w);
            Py_XDECREF(w);
            goto error;
        }
    }
    if (wsgi) {
        self->multiprocess = multiprocess != NULL && PyObject_IsTrue(multiprocess);
        self->url_scheme = url_scheme ? Py_NewRef(url_scheme) : PyUnicode_FromString("http");
        self->script_name = script_name ? Py_NewRef(script_name) : Py_NewRef(self->st->str_empty);
        self->access_log = access_log != NULL && access_log != Py_None ? Py_NewRef(access_log) : NULL;
        self->errors = errors != NULL && errors != Py_None ? Py_NewRef(errors) : NULL;
        if (self->url_scheme == NULL || cache_server_name(self) < 0
            || ymo__py_parse_proxies(proxies, &self->proxies, &self->nproxies, &self->any_proxy) < 0)
            goto error;
        PyObject *mod = PyImport_ImportModule("yimmo.wsgi");
        if (mod == NULL)
            goto error;
        self->file_wrapper = PyObject_GetAttrString(mod, "FileWrapper");
        Py_DECREF(mod);
        if (self->file_wrapper == NULL)
            goto error;
    }
    return (PyObject *)self;
error:
    Py_DECREF(self);
    return NULL;
}

static PyObject *server_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    return server_new_common(type, args, kw, 0);
}

static PyObject *wsgi_server_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    return server_new_common(type, args, kw, 1);
}

/* --- Methods --------------------------------------------------------------- */

static int wakeup_fd_install(YmoServerObject *self, PyObject **old)
{
    *old = NULL;
    PyObject *threading = PyImport_ImportModule("threading");
    if (threading == NULL)
        return -1;
    PyObject *cur = PyObject_CallMethod(threading, "current_thread", NULL);
    PyObject *main = PyObject_CallMethod(threading, "main_thread", NULL);
    Py_DECREF(threading);
    int is_main = cur != NULL && cur == main;
    Py_XDECREF(cur);
    Py_XDECREF(main);
    if (PyErr_Occurred())
        return -1;
    if (!is_main)
        return 0;
    if (pipe2(self->sigfd, O_NONBLOCK | O_CLOEXEC) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    PyObject *signal = PyImport_ImportModule("signal");
    if (signal == NULL)
        return -1;
    PyObject *setfd = PyObject_GetAttrString(signal, "set_wakeup_fd");
    Py_DECREF(signal);
    if (setfd == NULL)
        return -1;
    PyObject *a = Py_BuildValue("(i)", self->sigfd[1]);
    PyObject *k = Py_BuildValue("{sO}", "warn_on_full_buffer", Py_False);
    *old = (a && k) ? PyObject_Call(setfd, a, k) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(k);
    Py_DECREF(setfd);
    if (*old == NULL)
        return -1;
    ev_io_init(&self->sigio, on_signal, self->sigfd[0], EV_READ);
    ev_io_start(self->srv.loop, &self->sigio);
    ev_unref(self->srv.loop);
    return 0;
}

static void wakeup_fd_restore(YmoServerObject *self, PyObject *old)
{
    if (self->sigfd[0] < 0)
        return;
    ev_ref(self->srv.loop);
    ev_io_stop(self->srv.loop, &self->sigio);
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *signal = PyImport_ImportModule("signal");
    if (signal != NULL) {
        PyObject *r = PyObject_CallMethod(signal, "set_wakeup_fd", "O", old);
        Py_XDECREF(r);
        Py_DECREF(signal);
    }
    PyErr_Clear();
    PyErr_SetRaisedException(exc);
    close(self->sigfd[0]);
    close(self->sigfd[1]);
    self->sigfd[0] = self->sigfd[1] = -1;
}

static void join_workers(YmoServerObject *self, PyObject *list);

/* threading.Thread objects running _work(), started. */
static PyObject *start_workers(YmoServerObject *self)
{
    PyObject *threading = PyImport_ImportModule("threading");
    if (threading == NULL)
        return NULL;
    PyObject *list = PyList_New(0);
    PyObject *target = PyObject_GetAttrString((PyObject *)self, "_work");
    PyObject *thread_type = PyObject_GetAttrString(threading, "Thread");
    PyObject *noargs = PyTuple_New(0);
    if (list == NULL || target == NULL || thread_type == NULL || noargs == NULL)
        goto error;
    self->wq_shutdown = 0;
    for (int i = 0; i < self->nthreads; i++) {
        PyObject *kw = Py_BuildValue("{sOsNsO}", "target", target, "name",
                                     PyUnicode_FromFormat("yimmo-worker-%d", i), "daemon", Py_True);
        PyObject *t = kw ? PyObject_Call(thread_type, noargs, kw) : NULL;
        Py_XDECREF(kw);
        if (t == NULL)
            goto error;
        PyObject *r = PyObject_CallMethod(t, "start", NULL);
        if (r == NULL || PyList_Append(list, t) < 0) {
            Py_XDECREF(r);
            Py_DECREF(t);
            goto error;
        }
        Py_DECREF(r);
        Py_DECREF(t);
    }
    Py_DECREF(target);
    Py_DECREF(thread_type);
    Py_DECREF(noargs);
    Py_DECREF(threading);
    return list;
error:
    Py_XDECREF(target);
    Py_XDECREF(thread_type);
    Py_XDECREF(noargs);
    Py_DECREF(threading);
    if (list != NULL) {
        join_workers(self, list);
        Py_DECREF(list);
    }
    return NULL;
}

static void join_workers(YmoServerObject *self, PyObject *list)
{
    PyObject *exc = PyErr_GetRaisedException();
    pthread_mutex_lock(&self->wq_lock);
    self->wq_shutdown = 1;
    pthread_cond_broadcast(&self->wq_cond);
    pthread_mutex_unlock(&self->wq_lock);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *r = PyObject_CallMethod(PyList_GET_ITEM(list, i), "join", NULL);
        if (r == NULL)
            PyErr_WriteUnraisable(PyList_GET_ITEM(list, i));
        Py_XDECREF(r);
    }
    PyErr_SetRaisedException(exc);
}

static PyObject *server_run(YmoServerObject *self, PyObject *unused)
{
    if (self->phase != 0) {
        PyErr_SetString(PyExc_RuntimeError,
                        self->phase == 1 ? "the server is already running"
                                         : "the server has already run; make a new one");
        return NULL;
    }
    PyObject *old = NULL;
    if (wakeup_fd_install(self, &old) < 0) {
        wakeup_fd_restore(self, old ? old : Py_None);
        Py_XDECREF(old);
        return NULL;
    }
    PyObject *workers = NULL;
    if (self->nthreads > 0 && (workers = start_workers(self)) == NULL) {
        wakeup_fd_restore(self, old ? old : Py_None);
        Py_XDECREF(old);
        return NULL;
    }
    self->loop_thread = pthread_self();
    self->phase = 1;
    Py_INCREF(self);
    if (self->tune_malloc)
        ymo__py_tune_malloc();
    if (self->on_tick != NULL) {
        ev_timer_again(self->srv.loop, &self->tick);
        ev_unref(self->srv.loop);
    }
    drop_gil(self);
    ymo_server_run(&self->srv);
    take_gil(self);
    ymo_server_settle(&self->srv);
    if (self->on_tick != NULL) {
        ev_ref(self->srv.loop);
        ev_timer_stop(self->srv.loop, &self->tick);
    }
    if (ev_is_active(&self->drain)) {
        ev_ref(self->srv.loop);
        ev_timer_stop(self->srv.loop, &self->drain);
    }
    if (workers != NULL) {
        join_workers(self, workers);
        Py_DECREF(workers);
    }
    ymo__py_server_drain(self);
    wakeup_fd_restore(self, old ? old : Py_None);
    Py_XDECREF(old);
    self->phase = 2;
    PyObject *parked = self->parked;
    self->parked = NULL;
    Py_DECREF(self);
    if (parked != NULL) {
        PyErr_SetRaisedException(parked);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *server_stop(YmoServerObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *timeout = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:stop", kwlist, &timeout))
        return NULL;
    double t = -1.0;
    if (timeout != Py_None) {
        if (seconds_arg(timeout, "timeout", &t) < 0)
            return NULL;
        if (!(t >= 0)) {
            PyErr_Format(PyExc_ValueError, "timeout must be >= 0 or None, not %R", timeout);
            return NULL;
        }
    }
    /* From a callback on the loop (a handler, or a signal handler run
     * while one holds the loop): refuse new connections at once, not once
     * the loop gets back to the stop request. */
    if (self->phase == 1 && pthread_equal(pthread_self(), self->loop_thread))
        ymo_server_close_listeners(&self->srv);
    ymo_server_stop(&self->srv, t);
    Py_RETURN_NONE;
}

static PyObject *server_address(YmoServerObject *self, void *closure)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (ymo_server_address(&self->srv, &ss, &len) < 0) {
        PyErr_SetString(PyExc_OSError, "the server has no listening socket");
        return NULL;
    }
    char host[INET6_ADDRSTRLEN];
    int port;
    ymo_sockaddr_host(&ss, host, &port);
    return Py_BuildValue("(si)", host, port);
}

static PyObject *server_connections(YmoServerObject *self, void *closure)
{
    return PyLong_FromUnsignedLong(self->srv.nconns);
}

/* --- Type -------------------------------------------------------------------- */

static int server_traverse(YmoServerObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->handler);
    Py_VISIT(self->parked);
    Py_VISIT(self->on_tick);
    Py_VISIT(self->access_log);
    Py_VISIT(self->errors);
    Py_VISIT(self->file_wrapper);
    Py_VISIT(self->ws_routes);
    return 0;
}

static int server_clear(YmoServerObject *self)
{
    Py_CLEAR(self->handler);
    Py_CLEAR(self->parked);
    Py_CLEAR(self->on_tick);
    Py_CLEAR(self->access_log);
    Py_CLEAR(self->errors);
    Py_CLEAR(self->file_wrapper);
    Py_CLEAR(self->environ_template);
    Py_CLEAR(self->ws_routes);
    Py_CLEAR(self->url_scheme);
    Py_CLEAR(self->script_name);
    Py_CLEAR(self->server_name);
    Py_CLEAR(self->server_port);
    return 0;
}

static void server_dealloc(YmoServerObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->wq_tail != NULL) {
        ymo_server_free(&self->srv);
        ymo__py_server_drain(self);
        pthread_mutex_destroy(&self->garbage_lock);
        pthread_mutex_destroy(&self->wq_lock);
        pthread_cond_destroy(&self->wq_cond);
    }
    free(self->garbage);
    free(self->proxies);
    server_clear(self);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyObject *server_reload_tls(YmoServerObject *self, PyObject *o)
{
    ymo_tls_t *t;
    if (ymo__py_tls_load(o, &t) < 0)
        return NULL;
    ymo_server_set_tls(&self->srv, t);
    ymo_tls_unref(t);
    Py_RETURN_NONE;
}

static PyMethodDef server_methods[] = {
    {"reload_tls", (PyCFunction)server_reload_tls, METH_O,
     "reload_tls(tls): load new TLS settings (a dict, as tls= takes) for new connections;\n"
     "open ones keep theirs. On an error the old settings stay."},
    {"run", (PyCFunction)server_run, METH_NOARGS,
     "run(): serve until stop() (or Ctrl-C); the GIL is released while waiting."},
    {"_work", (PyCFunction)server_work, METH_NOARGS,
     "_work(): the body of a worker thread (started by run() when threads > 0)."},
    {"stop", (PyCFunction)(void (*)(void))server_stop, METH_VARARGS | METH_KEYWORDS,
     "stop(timeout=None): stop accepting, let in-flight exchanges finish (at most timeout\n"
     "seconds), then run() returns. Safe from any thread and from signal handlers."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef server_getset[] = {
    {"address", (getter)server_address, NULL, "The bound (host, port).", NULL},
    {"connections", (getter)server_connections, NULL, "Open client connections.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot server_slots[] = {
    {Py_tp_doc,
     "Server(handler, *, host='127.0.0.1', port=8000, sock=None, backlog=1024,\n"
     "       reuse_port=False, keepalive_timeout=5.0, header_timeout=10.0,\n"
     "       body_timeout=30.0, send_timeout=30.0, max_body_size=100 MiB,\n"
     "       max_request_line=8192, max_header_size=8192, max_header_bytes=65536,\n"
     "       max_headers=100, read_size=16384, send_high_water=1 MiB,\n"
     "       max_connections=None, threads=0, on_tick=None, tick_interval=1.0,\n"
     "       websocket=None, ws_max_message=16 MiB, ws_idle_timeout=300.0,\n"
     "       ws_ping_interval=0, ws_ping_timeout=20.0, ws_send_limit=16 MiB,\n"
     "       ws_deflate=True, tls=None, tune_malloc=True, busy_poll=0)\n\n"
     "An HTTP/1.1 server calling handler(exchange) for every request."},
    {Py_tp_new, server_new},
    {Py_tp_dealloc, server_dealloc},
    {Py_tp_traverse, server_traverse},
    {Py_tp_clear, server_clear},
    {Py_tp_methods, server_methods},
    {Py_tp_getset, server_getset},
    {0, NULL},
};

static PyType_Spec server_spec = {
    .name = "yimmo.Server",
    .basicsize = sizeof(YmoServerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = server_slots,
};

static PyType_Slot wsgi_server_slots[] = {
    {Py_tp_doc,
     "WSGIServer(app, *, host='127.0.0.1', port=8000, sock=None, url_scheme='http',\n"
     "           script_name='', multiprocess=False, access_log=None,\n"
     "           body_buffer_size=65536, threads=0, errors=None,\n"
     "           forwarded_allow_ips=None, ... and every Server argument)\n\n"
     "A PEP 3333 server calling app(environ, start_response) for every request."},
    {Py_tp_new, wsgi_server_new},
    {Py_tp_dealloc, server_dealloc},
    {Py_tp_traverse, server_traverse},
    {Py_tp_clear, server_clear},
    {Py_tp_methods, server_methods},
    {Py_tp_getset, server_getset},
    {0, NULL},
};

static PyType_Spec wsgi_server_spec = {
    .name = "yimmo.WSGIServer",
    .basicsize = sizeof(YmoServerObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = wsgi_server_slots,
};

int ymo__py_server_init(PyObject *module, ymo_py_state *st)
{
    st->server_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &server_spec, NULL);
    if (st->server_type == NULL || PyModule_AddType(module, st->server_type) < 0)
        return -1;
    st->wsgi_server_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &wsgi_server_spec, NULL);
    if (st->wsgi_server_type == NULL)
        return -1;
    return PyModule_AddType(module, st->wsgi_server_type);
}
