/*
 * The yimmo._yimmo module: multi-phase init, module state, shared helpers.
 */
#include "py/py_internal.h"

#include <stdarg.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "yimmo/http.h"

static const char *const common_methods[9] = {
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE",
};

ymo_py_state *ymo__py_state_from_type(PyTypeObject *type)
{
    PyObject *m = PyType_GetModuleByDef(type, &ymo__py_module_def);
    if (m == NULL)
        return NULL;
    return ymo__py_state(m);
}

PyObject *ymo__py_method_str(ymo_py_state *st, const char *p, size_t len)
{
    for (int i = 0; i < 9; i++) {
        const char *m = common_methods[i];
        if (strlen(m) == len && memcmp(m, p, len) == 0)
            return Py_NewRef(st->str_methods[i]);
    }
    return PyUnicode_DecodeLatin1(p, (Py_ssize_t)len, NULL);
}

PyObject *ymo__py_raise_parse_error(ymo_py_state *st, int err)
{
    PyObject *args = Py_BuildValue("(sisi)", ymo_strerror(err), ymo_http_error_status(err),
                                   ymo_errname(err), err);
    if (args == NULL)
        return NULL;
    PyErr_SetObject(st->parse_error, args);
    Py_DECREF(args);
    return NULL;
}

static PyObject *get_logger(ymo_py_state *st)
{
    if (st->logger == NULL) {
        PyObject *logging = PyImport_ImportModule("logging");
        if (logging == NULL)
            return NULL;
        st->logger = PyObject_CallMethod(logging, "getLogger", "s", "yimmo");
        Py_DECREF(logging);
    }
    return st->logger;
}

int ymo__py_check_owner(pthread_t owner, const char *what, const char *runner)
{
    if (pthread_equal(pthread_self(), owner))
        return 0;
    PyErr_Format(PyExc_RuntimeError, "%s is used on the thread that runs %s only, "
                                     "not from other threads", what, runner);
    return -1;
}

/* A log call that failed. Ctrl-C may land in it (the logging module's
 * Python code runs the pending signal handler): that KeyboardInterrupt is
 * not the log's to swallow, so it is tripped again for the loop's signal
 * watcher, which stops the server. Anything else is dropped (reported when
 * the logger is there). */
static void log_failed(PyObject *logger)
{
    if (PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
        PyErr_Clear();
        PyErr_SetInterrupt();
    } else if (logger != NULL) {
        PyErr_WriteUnraisable(logger);
    } else {
        PyErr_Clear();
    }
}

void ymo__py_log_exception(ymo_py_state *st, const char *msg)
{
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *logger = get_logger(st);
    if (logger == NULL || exc == NULL) {
        log_failed(NULL);
        if (exc != NULL) {
            PyErr_SetRaisedException(exc);
            PyErr_WriteUnraisable(NULL);
        }
        return;
    }
    PyObject *kw = Py_BuildValue("{sO}", "exc_info", exc);
    PyObject *meth = PyObject_GetAttrString(logger, "error");
    PyObject *args = Py_BuildValue("(s)", msg);
    PyObject *r = NULL;
    if (kw != NULL && meth != NULL && args != NULL)
        r = PyObject_Call(meth, args, kw);
    if (r == NULL)
        log_failed(logger);
    Py_XDECREF(r);
    Py_XDECREF(args);
    Py_XDECREF(meth);
    Py_XDECREF(kw);
    Py_DECREF(exc);
}

void ymo__py_log(ymo_py_state *st, int level, const char *fmt, ...)
{
    PyObject *saved = PyErr_GetRaisedException();
    PyObject *logger = get_logger(st);
    if (logger == NULL) {
        log_failed(NULL);
        goto done;
    }
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg == NULL) {
        log_failed(NULL);
        goto done;
    }
    PyObject *r = PyObject_CallMethod(logger, "log", "iO", level, msg);
    if (r == NULL)
        log_failed(logger);
    Py_XDECREF(r);
    Py_DECREF(msg);
done:
    PyErr_SetRaisedException(saved);
}

/* ParseError.reason, .status, .name and .code read the exception's args. */
static PyObject *parse_error_arg(PyObject *self, void *closure)
{
    PyObject *args = PyObject_GetAttrString(self, "args");
    if (args == NULL)
        return NULL;
    Py_ssize_t k = (Py_ssize_t)(intptr_t)closure;
    PyObject *r = (PyTuple_Check(args) && PyTuple_GET_SIZE(args) > k)
                      ? PyTuple_GET_ITEM(args, k) /* borrowed from args */
                      : Py_None;
    Py_INCREF(r);
    Py_DECREF(args);
    return r;
}

static PyGetSetDef parse_error_getset[] = {
    {"reason", parse_error_arg, NULL, "Why the request was refused.", (void *)0},
    {"status", parse_error_arg, NULL, "The HTTP status it is answered with.", (void *)1},
    {"name", parse_error_arg, NULL, "The error's name, such as YMO_E_BAD_METHOD.", (void *)2},
    {"code", parse_error_arg, NULL, "The error's YMO_E* code (negative).", (void *)3},
    {NULL, NULL, NULL, NULL, NULL},
};

static int add_parse_error_attrs(PyObject *exc)
{
    for (PyGetSetDef *g = parse_error_getset; g->name != NULL; g++) {
        PyObject *d = PyDescr_NewGetSet((PyTypeObject *)exc, g);
        if (d == NULL)
            return -1;
        int r = PyObject_SetAttrString(exc, g->name, d);
        Py_DECREF(d);
        if (r < 0)
            return -1;
    }
    return 0;
}

/* glibc's heap, for a serving process: blocks under 4 MiB come from the
 * heap, and up to 16 MiB freed at its top stay mapped. With glibc's sliding
 * defaults a server that allocates and frees buffers per request or message
 * (input buffers, WebSocket messages, Python's large bytes) keeps moving the
 * heap's top with brk() and pays page faults for fresh pages: measured on
 * 64 KiB HTTP bodies (about 25 faults a request) and 4 KiB WebSocket echoes
 * (10.7 against 5.6 us of CPU a round trip). Process-wide, so it is left
 * alone when the environment sets malloc's variables, and Server(...,
 * tune_malloc=False) skips it. Called with the GIL held. */
static int malloc_state = -1;   /* -1 not tried, 0 left alone, 1 applied */

int ymo__py_tune_malloc(void)
{
    if (malloc_state >= 0)
        return malloc_state;
    malloc_state = 0;
#ifdef __GLIBC__
    static const char *const vars[] = {
        "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
    };
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        if (getenv(vars[i]) != NULL)
            return malloc_state;
    const char *tunables = getenv("GLIBC_TUNABLES");
    if (tunables != NULL && strstr(tunables, "glibc.malloc.") != NULL)
        return malloc_state;
    if (mallopt(M_MMAP_THRESHOLD, 4 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 16 << 20) == 1)
        malloc_state = 1;
#endif
    return malloc_state;
}

static PyObject *malloc_tuned(PyObject *module, PyObject *unused)
{
    if (malloc_state < 0)
        Py_RETURN_NONE;
    return PyBool_FromLong(malloc_state);
}

static PyMethodDef module_functions[] = {
    {"_malloc_tuned", malloc_tuned, METH_NOARGS,
     "_malloc_tuned(): whether a server's run() set glibc's heap thresholds in this\n"
     "process: True, False (left alone), or None (no server has run)."},
    {NULL, NULL, 0, NULL},
};

static int module_exec(PyObject *m)
{
    ymo_py_state *st = ymo__py_state(m);

    for (int i = 0; i < 9; i++) {
        st->str_methods[i] = PyUnicode_InternFromString(common_methods[i]);
        if (st->str_methods[i] == NULL)
            return -1;
    }
    st->str_http10 = PyUnicode_InternFromString("HTTP/1.0");
    st->str_http11 = PyUnicode_InternFromString("HTTP/1.1");
    st->str_empty = PyUnicode_InternFromString("");
    st->str_stderr = PyUnicode_InternFromString("stderr");
    st->sys_module = PyImport_ImportModule("sys");
    if (st->str_http10 == NULL || st->str_http11 == NULL || st->str_empty == NULL
        || st->str_stderr == NULL || st->sys_module == NULL)
        return -1;

    st->parse_error = PyErr_NewExceptionWithDoc(
        "yimmo.ParseError",
        "A request the HTTP parser refused.\n\n"
        "args: (reason, status, name, code); also as the attributes\n"
        "reason, status (the HTTP status it is answered with), name and code.",
        PyExc_ValueError, NULL);
    if (st->parse_error == NULL)
        return -1;
    if (add_parse_error_attrs(st->parse_error) < 0)
        return -1;
    if (PyModule_AddObjectRef(m, "ParseError", st->parse_error) < 0)
        return -1;

    if (PyModule_AddStringConstant(m, "__version__", YMO_VERSION) < 0
        || PyModule_AddFunctions(m, module_functions) < 0)
        return -1;
    if (ymo__py_headers_init(m, st) < 0 || ymo__py_parsers_init(m, st) < 0
        || ymo__py_exchange_init(m, st) < 0 || ymo__py_server_init(m, st) < 0
        || ymo__py_wsgi_init(m, st) < 0 || ymo__py_ws_init(m, st) < 0
        || ymo__py_wsgi_ws_init(m, st) < 0 || ymo__py_tls_init(m, st) < 0)
        return -1;
    return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg)
{
    ymo_py_state *st = ymo__py_state(m);
    Py_VISIT(st->server_type);
    Py_VISIT(st->exchange_type);
    Py_VISIT(st->headers_type);
    Py_VISIT(st->request_parser_type);
    Py_VISIT(st->parse_error);
    Py_VISIT(st->logger);
    Py_VISIT(st->wsgi_server_type);
    Py_VISIT(st->websocket_type);
    Py_VISIT(st->wsmessage_type);
    Py_VISIT(st->wsgi_websocket_type);
    Py_VISIT(st->sys_module);
    return ymo__py_wsgi_traverse(st, visit, arg);
}

static int module_clear(PyObject *m)
{
    ymo_py_state *st = ymo__py_state(m);
    Py_CLEAR(st->server_type);
    Py_CLEAR(st->exchange_type);
    Py_CLEAR(st->headers_type);
    Py_CLEAR(st->request_parser_type);
    Py_CLEAR(st->parse_error);
    Py_CLEAR(st->logger);
    Py_CLEAR(st->wsgi_server_type);
    Py_CLEAR(st->websocket_type);
    Py_CLEAR(st->wsmessage_type);
    Py_CLEAR(st->wsgi_websocket_type);
    ymo__py_wsgi_clear(st);
    ymo__py_tls_clear(st);
    for (int i = 0; i < 9; i++)
        Py_CLEAR(st->str_methods[i]);
    Py_CLEAR(st->str_http10);
    Py_CLEAR(st->str_http11);
    Py_CLEAR(st->str_empty);
    Py_CLEAR(st->str_stderr);
    Py_CLEAR(st->sys_module);
    return 0;
}

static void module_free(void *m)
{
    module_clear((PyObject *)m);
}

static PyModuleDef_Slot module_slots[] = {
    {Py_mod_exec, module_exec},
    {0, NULL},
};

PyModuleDef ymo__py_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "yimmo._yimmo",
    .m_doc = "The C core of yimmo: the engine, the HTTP parser and the Python types.",
    .m_size = sizeof(ymo_py_state),
    .m_slots = module_slots,
    .m_traverse = module_traverse,
    .m_clear = module_clear,
    .m_free = module_free,
};

PyMODINIT_FUNC PyInit__yimmo(void)
{
    return PyModuleDef_Init(&ymo__py_module_def);
}
