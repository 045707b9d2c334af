/* Declarations shared by the CPython layer (csrc/py). */
#ifndef YMO_PY_INTERNAL_H
#define YMO_PY_INTERNAL_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "yimmo/core.h"
#include "yimmo/exchange.h"

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

/* Per-module state (PEP 573): every type and cached object lives here. */
typedef struct {
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

/* A method name as a str, interned for the common ones. New reference. */
PyObject *ymo__py_method_str(ymo_py_state *st, const char *p, size_t len);

/* A yimmo.Headers holding pairs, a list of (name, value) tuples. Steals pairs. */
PyObject *ymo__py_headers_new(ymo_py_state *st, PyObject *pairs);

/* Raise yimmo.ParseError for a YMO_E* code. Returns NULL. */
PyObject *ymo__py_raise_parse_error(ymo_py_state *st, int err);

/* Log the current exception with its traceback on the "yimmo" logger. */
void ymo__py_log_exception(ymo_py_state *st, const char *msg);

/* Log a line at level (logging.INFO...) on the "yimmo" logger. */
void ymo__py_log(ymo_py_state *st, int level, const char *fmt, ...);

/* yimmo.Server. */
typedef struct {
    PyObject_HEAD
    ymo_server_t srv;
    ymo_py_state *st;
    PyObject *handler;
    PyThreadState *tstate;      /* the loop thread's, while it runs without the GIL */
    int gil_held;               /* the loop thread holds the GIL */
    int phase;                  /* 0 new, 1 running, 2 done */
    PyObject **garbage;         /* references released without the GIL */
    size_t ngarbage, capgarbage;
    PyObject *parked;           /* exception from a signal handler, re-raised by run() */
    int sigfd[2];
    ev_io sigio;
} YmoServerObject;

/* Drop references parked while the GIL was released. GIL held. */
void ymo__py_server_drain(YmoServerObject *self);

/* Serve one request on c: build the Exchange, call the handler. GIL held. */
void ymo__py_exchange_run(YmoServerObject *self, ymo_conn_t *c);

#endif
