/* Declarations shared by the CPython layer (csrc/py). */
#ifndef YMO_PY_INTERNAL_H
#define YMO_PY_INTERNAL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "yimmo/core.h"
#include "yimmo/exchange.h"
#include "yimmo/ws.h"

#if PY_VERSION_HEX < 0x030C0000
/* Python 3.11 lacks the single-object exception API of 3.12. */
static inline PyObject *ymo__py_get_raised(void)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (t == NULL)
        return NULL;
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
}

static inline void ymo__py_set_raised(PyObject *v)
{
    if (v == NULL) {
        PyErr_Clear();
        return;
    }
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(v)), v, PyException_GetTraceback(v));
}
#define PyErr_GetRaisedException ymo__py_get_raised
#define PyErr_SetRaisedException ymo__py_set_raised
#endif

/* Interned WSGI environ keys, in module state. */
enum {
    WK_REQUEST_METHOD, WK_SCRIPT_NAME, WK_PATH_INFO, WK_QUERY_STRING, WK_RAW_URI,
    WK_SERVER_PROTOCOL, WK_SERVER_NAME, WK_SERVER_PORT, WK_REMOTE_ADDR, WK_REMOTE_PORT,
    WK_CONTENT_TYPE, WK_CONTENT_LENGTH, WK_WSGI_VERSION, WK_WSGI_URL_SCHEME,
    WK_WSGI_INPUT, WK_WSGI_ERRORS, WK_WSGI_MULTITHREAD, WK_WSGI_MULTIPROCESS,
    WK_WSGI_RUN_ONCE, WK_WSGI_INPUT_TERMINATED, WK_WSGI_FILE_WRAPPER,
    WK__COUNT
};

/* The TLS environ's interned keys and fixed values (py/tls.c). */
enum {
    TS_HTTPS, TS_SSL_PROTOCOL, TS_SSL_CIPHER, TS_SSL_TLS_SNI, TS_SSL_CLIENT_VERIFY,
    TS_SSL_CLIENT_S_DN, TS_SSL_CLIENT_I_DN, TS_SSL_CLIENT_CERT,
    TS_https, TS_on, TS_NONE, TS_SUCCESS, TS_FAILED,
    TS__COUNT
};

/* Request headers whose HTTP_* key is interned rather than built. */
#define YMO_WSGI_COMMON_HEADERS 24

/* Per-module state (PEP 573): every type and cached object lives here. */
typedef struct {
    PyTypeObject *wsgi_server_type;
    PyTypeObject *websocket_type;
    PyTypeObject *wsmessage_type;
    PyTypeObject *wsgi_websocket_type;
    PyTypeObject *wsgi_request_type;
    PyTypeObject *input_type;
    PyObject *wsgi_keys[WK__COUNT];
    PyObject *wsgi_header_keys[YMO_WSGI_COMMON_HEADERS];
    PyObject *wsgi_version;     /* (1, 0) */
    PyTypeObject *server_type;
    PyTypeObject *exchange_type;
    PyTypeObject *headers_type;
    PyTypeObject *request_parser_type;
    PyObject *parse_error;      /* yimmo.ParseError */
    PyObject *logger;           /* logging.getLogger("yimmo"), created lazily */
    PyObject *str_methods[9];   /* interned common method names */
    PyObject *str_http10;       /* "HTTP/1.0" */
    PyObject *str_http11;       /* "HTTP/1.1" */
    PyObject *str_empty;        /* "" */
    PyObject *sys_module;       /* sys, for sys.stderr (wsgi.errors) */
    PyObject *str_stderr;       /* "stderr" */
    PyObject *tls_strs[TS__COUNT];  /* TLS environ keys and fixed values */
    struct {                    /* OpenSSL's static version and cipher names */
        const char *name;
        PyObject *str;
    } tls_names[8];
} ymo_py_state;

extern PyModuleDef ymo__py_module_def;

static inline ymo_py_state *ymo__py_state(PyObject *module)
{
    return (ymo_py_state *)PyModule_GetState(module);
}

/* State of the module that defined type (works for subclasses too). */
ymo_py_state *ymo__py_state_from_type(PyTypeObject *type);

/* Each file adds its types and functions to the module at exec time. */
int ymo__py_headers_init(PyObject *module, ymo_py_state *st);
int ymo__py_parsers_init(PyObject *module, ymo_py_state *st);
int ymo__py_server_init(PyObject *module, ymo_py_state *st);
int ymo__py_exchange_init(PyObject *module, ymo_py_state *st);
int ymo__py_wsgi_init(PyObject *module, ymo_py_state *st);
int ymo__py_ws_init(PyObject *module, ymo_py_state *st);
int ymo__py_wsgi_ws_init(PyObject *module, ymo_py_state *st);
int ymo__py_tls_init(PyObject *module, ymo_py_state *st);
void ymo__py_tls_clear(ymo_py_state *st);
/* The engine's WebSocket hooks. */
void ymo__py_ws_hooks(ymo_server_hooks_t *hooks);
void ymo__py_wsgi_clear(ymo_py_state *st);
int ymo__py_wsgi_traverse(ymo_py_state *st, visitproc visit, void *arg);

/* A method name as a str, interned for the common ones. New reference. */
PyObject *ymo__py_method_str(ymo_py_state *st, const char *p, size_t len);

/* A yimmo.Headers holding pairs, a list of (name, value) tuples. Steals pairs. */
PyObject *ymo__py_headers_new(ymo_py_state *st, PyObject *pairs);

/* Raise yimmo.ParseError for a YMO_E* code. Returns NULL. */
PyObject *ymo__py_raise_parse_error(ymo_py_state *st, int err);

/* A connection belongs to the thread that runs its handler: another thread
 * using it (while that one waits on the client, the GIL released) would
 * interleave two writers in one response, or outlive the exchange. 0 on
 * owner's thread, else RuntimeError "WHAT is used on the thread that runs
 * RUNNER only, not from other threads" and -1. */
int ymo__py_check_owner(pthread_t owner, const char *what, const char *runner);

/* An int argument in min..max into *out: TypeError or ValueError naming it
 * otherwise (a Python int past a C long included). NULL or None: *out is
 * left as it is (the default). 0 or -1. */
int ymo__py_uint_arg(PyObject *o, const char *name, unsigned long long min,
                     unsigned long long max, unsigned long long *out);

/* glibc's heap thresholds for a serving process (module.c), once, unless the
 * environment sets malloc's own variables. 1 when applied, else 0. */
int ymo__py_tune_malloc(void);

/* Log the current exception with its traceback on the "yimmo" logger. */
void ymo__py_log_exception(ymo_py_state *st, const char *msg);

/* Log a line at level (logging.INFO...) on the "yimmo" logger. */
void ymo__py_log(ymo_py_state *st, int level, const char *fmt, ...);

/* TLS (csrc/py/tls.c). A tls={...} dict as a loaded configuration: 0, or
 * -1 with OSError, ValueError or TypeError set. */
struct ymo_tls_s;
int ymo__py_tls_load(PyObject *o, struct ymo_tls_s **out);
/* exchange.tls: a dict of what c negotiated, or None on plain connections. */
PyObject *ymo__py_tls_info(ymo_conn_t *c);
/* The https and SSL_* environ entries on a TLS connection: 1 when set, 0
 * on plain connections, -1 on error. */
int ymo__py_tls_environ(ymo_py_state *st, PyObject *env, ymo_conn_t *c);

/* A trusted proxy's address or network (forwarded_allow_ips): IPv4 as
 * IPv4-mapped IPv6, bits the prefix length. */
typedef struct {
    uint8_t addr[16];
    int bits;
} ymo_py_proxy_t;

/* Parse forwarded_allow_ips (None, "*", "a, b/n", or an iterable of such
 * strings) into *out (malloc'ed), *n and *any. -1 with ValueError/TypeError. */
int ymo__py_parse_proxies(PyObject *o, ymo_py_proxy_t **out, int *n, int *any);
/* Whether the peer of c is one of them (a Unix socket peer always is, once
 * any proxy is trusted). */
int ymo__py_peer_proxied(const ymo_py_proxy_t *p, int n, int any, const ymo_conn_t *c);

/* yimmo.Server. */
typedef struct {
    PyObject_HEAD
    ymo_server_t srv;
    ymo_py_state *st;
    PyObject *handler;
    PyThreadState *tstate;      /* the loop thread's, while it runs without the GIL */
    int phase;                  /* 0 new, 1 running, 2 done */
    pthread_t loop_thread;      /* run()'s thread, while phase is 1 */
    PyObject **garbage;         /* references released without the GIL */
    size_t ngarbage, capgarbage;
    pthread_mutex_t garbage_lock;
    /* Worker threads (threads > 0): requests queue here. */
    int nthreads;
    pthread_mutex_t wq_lock;
    pthread_cond_t wq_cond;
    ymo_conn_t *wq_head, **wq_tail;
    int wq_shutdown;
    PyObject *parked;           /* exception from a signal handler, re-raised by run() */
    int sigfd[2];
    ev_io sigio;
    ev_timer tick;
    PyObject *on_tick;          /* callable() every tick interval, or NULL */
    ev_timer drain;             /* lets references parked without the GIL go when idle */
    int tune_malloc;            /* run() calls ymo__py_tune_malloc() */
    /* WSGIServer only. */
    int wsgi;
    int multiprocess;
    PyObject *url_scheme;       /* str */
    PyObject *script_name;      /* str */
    PyObject *server_name;      /* str, from the first listener */
    PyObject *server_port;      /* str */
    PyObject *access_log;       /* callable or NULL */
    PyObject *errors;           /* wsgi.errors, or NULL: sys.stderr as it is then */
    ymo_py_proxy_t *proxies;    /* forwarded_allow_ips (malloc'ed), nproxies of them */
    int nproxies;
    int any_proxy;              /* forwarded_allow_ips="*" */
    PyObject *file_wrapper;     /* yimmo.wsgi.FileWrapper */
    PyObject *environ_template; /* copied for each request: keys in place */
    PyObject *ws_routes;        /* {path: handler} for WebSockets, or NULL */
    ymo_ws_config_t ws_config;
} YmoServerObject;

/* Whether this thread holds the GIL, for the engine's release hook (which
 * runs on threads with and without it). */
extern _Thread_local int ymo__py_gil_held;

/* Run stmt with the GIL released (a blocking wait on one connection);
 * references the engine releases meanwhile are parked. */
#define YMO_BLOCKING(srv, stmt)          \
    do {                                 \
        ymo__py_gil_held = 0;            \
        Py_BEGIN_ALLOW_THREADS           \
        stmt;                            \
        Py_END_ALLOW_THREADS             \
        ymo__py_gil_held = 1;            \
        ymo__py_server_drain(srv);       \
    } while (0)

/* Wait while c's output is over the high-water mark, so an application that
 * produces faster than its client reads keeps memory bounded. 0, or -1 with
 * ConnectionError set (the connection is closed). */
int ymo__py_backpressure(YmoServerObject *srv, ymo_conn_t *c);

/* Application code raised (the error is set; this clears it).
 * KeyboardInterrupt and SystemExit are parked and stop the server, run()
 * re-raises them; a ConnectionError once c's client left is dropped;
 * anything else is logged with its traceback under what. */
void ymo__py_app_failed(YmoServerObject *srv, ymo_conn_t *c, const char *what);

/* A whole short text/plain response on c, replacing any response state. */
void ymo__py_simple_response(ymo_conn_t *c, int status, const char *text);

/* A request on a WebSocket path: 1 when it was handled (upgraded or
 * refused), 0 when it is no upgrade and the HTTP handler should answer. */
int ymo__py_ws_upgrade(YmoServerObject *srv, ymo_conn_t *c, PyObject *handler, PyObject *path,
                       PyObject *query, PyObject *headers, PyObject *remote_addr);

/* environ["yimmo.websocket"] for an upgrade request; detach when the
 * request ends. */
PyObject *ymo__py_wsgi_ws_new(YmoServerObject *srv, ymo_conn_t *c);
/* The request that carried environ["yimmo.websocket"] is over: a WebSocket
 * the application accepted and left open is closed with 1000, or 1011 when
 * the application failed. On the worker thread, GIL held. */
void ymo__py_wsgi_ws_detach(PyObject *obj, int failed);

/* Go on with a WSGI response suspended at the high-water mark. GIL held. */
void ymo__py_wsgi_resume(YmoServerObject *self, ymo_conn_t *c);

/* Serve one request on c through the WSGI application. GIL held. */
void ymo__py_wsgi_run(YmoServerObject *self, ymo_conn_t *c);

/* What a WSGI environ is built from besides the parsed request: the
 * server's settings and the connection's addresses (all references
 * borrowed). */
typedef struct {
    PyObject *script_name, *url_scheme;     /* str */
    PyObject *file_wrapper;                 /* wsgi.file_wrapper */
    int multithread, multiprocess;
    PyObject *server_name, *server_port;    /* str: SERVER_* with no Host nor inet local */
    const struct sockaddr_storage *local;   /* the address the request came in on, or NULL */
    int tls;                                /* over TLS: SERVER_PORT defaults to 443 */
    const char *remote;                     /* REMOTE_ADDR, latin-1 */
    size_t remote_len;
    int remote_port;
    int proxied;        /* a trusted proxy: X-Forwarded-Proto and the like set the scheme */
    PyObject *errors;                       /* wsgi.errors, or NULL for sys.stderr */
} ymo_py_environ_src_t;

/* The environ the WSGIServer gives the application for the request p parsed
 * in base, with wsgi.input set to input (yimmo.parsers.build_wsgi_environ).
 * New reference. */
PyObject *ymo__py_wsgi_environ(ymo_py_state *st, const ymo_http_parser_t *p, const char *base,
                               const ymo_py_environ_src_t *src, PyObject *input);

/* Drop references parked while the GIL was released. GIL held. */
void ymo__py_server_drain(YmoServerObject *self);

/* Serve one request on c: build the Exchange, call the handler. GIL held. */
void ymo__py_exchange_run(YmoServerObject *self, ymo_conn_t *c);

#endif
