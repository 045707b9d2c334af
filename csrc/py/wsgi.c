/*
 * The WSGI fast path (PEP 3333): the environ built from the parser's spans
 * with keys interned in module state, start_response and wsgi.input as C
 * types, and the response iterable written without copies where it counts.
 */
#include "py/py_internal.h"
#include "yimmo/tls.h"

#include <structmember.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <fcntl.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *const wsgi_key_names[WK__COUNT] = {
    "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "RAW_URI",
    "SERVER_PROTOCOL", "SERVER_NAME", "SERVER_PORT", "REMOTE_ADDR", "REMOTE_PORT",
    "CONTENT_TYPE", "CONTENT_LENGTH", "wsgi.version", "wsgi.url_scheme",
    "wsgi.input", "wsgi.errors", "wsgi.multithread", "wsgi.multiprocess",
    "wsgi.run_once", "wsgi.input_terminated", "wsgi.file_wrapper",
};

/* Frequent request headers: their HTTP_* keys are interned once. */
static const char *const common_headers[YMO_WSGI_COMMON_HEADERS] = {
    "host", "user-agent", "accept", "accept-encoding", "accept-language", "connection",
    "cookie", "referer", "cache-control", "upgrade-insecure-requests", "origin", "pragma",
    "if-modified-since", "if-none-match", "authorization", "x-forwarded-for",
    "x-forwarded-proto", "x-real-ip", "upgrade", "range", "x-requested-with", "dnt",
    "sec-fetch-mode", "te",
};

/* --- The request object: start_response and write ------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;  /* start_response is called once a request */
    ymo_conn_t *conn;           /* NULL once the request is over */
    YmoServerObject *server;    /* borrowed: valid while conn is set */
    PyObject *status;           /* the status line given to start_response */
    PyObject *headers;          /* the header list given to start_response */
    int code;
    int head_sent;
    int app_length;             /* the application set Content-Length */
    /* Kept while a response waits for its output to drain (loop mode). */
    PyObject *env;
    PyObject *input;
    PyObject *result;           /* the application's iterable */
    PyObject *iter;             /* iter(result), being consumed */
    PyObject *websocket;        /* environ["yimmo.websocket"], or NULL */
    double started;
    pthread_t thread;           /* the one that runs the application */
} YmoWSGIRequestObject;

static int req_live(YmoWSGIRequestObject *rq)
{
    if (rq->conn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the request is over");
        return -1;
    }
    if (ymo__py_check_owner(rq->thread, "the write() callable", "the application") < 0)
        return -1;
    if (rq->conn->flags & YMO_CONN_CLOSED) {
        PyErr_SetString(PyExc_ConnectionError, "the client went away");
        return -1;
    }
    return 0;
}

/* A header name or value as latin-1 bytes (PEP 3333: native strings). */
static int latin1(PyObject *o, const char *what, PyObject **keep, const char **p, size_t *len)
{
    *keep = NULL;
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "header %s must be str, not %.100s", what,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    if (PyUnicode_IS_ASCII(o)) {
        *p = (const char *)PyUnicode_DATA(o);
        *len = (size_t)PyUnicode_GET_LENGTH(o);
        return 0;
    }
    *keep = PyUnicode_AsLatin1String(o);
    if (*keep == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "header %s %R is not latin-1", what, o);
        return -1;
    }
    *p = PyBytes_AS_STRING(*keep);
    *len = (size_t)PyBytes_GET_SIZE(*keep);
    return 0;
}

static int ieq(const char *a, size_t n, const char *lower)
{
    if (strlen(lower) != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = a[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch + 32);
        if (ch != lower[i])
            return 0;
    }
    return 1;
}

/* Check the headers an application gave, so a bad one raises in the
 * application rather than reaching the wire. Sets *app_length. */
static int check_headers(PyObject *headers, int *app_length)
{
    if (!PyList_Check(headers)) {
        PyErr_Format(PyExc_TypeError, "response_headers must be a list, not %.100s",
                     Py_TYPE(headers)->tp_name);
        return -1;
    }
    *app_length = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(headers); i++) {
        PyObject *pair = PyList_GET_ITEM(headers, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_Format(PyExc_TypeError, "response_headers[%zd] must be a (name, value) tuple", i);
            return -1;
        }
        PyObject *kn, *kv;
        const char *n, *v;
        size_t nl, vl;
        if (latin1(PyTuple_GET_ITEM(pair, 0), "name", &kn, &n, &nl) < 0)
            return -1;
        if (latin1(PyTuple_GET_ITEM(pair, 1), "value", &kv, &v, &vl) < 0) {
            Py_XDECREF(kn);
            return -1;
        }
        int r = ymo_http_check_field(n, nl, v, vl);
        int te = ieq(n, nl, "transfer-encoding");
        int cl = ieq(n, nl, "content-length");
        Py_XDECREF(kn);
        Py_XDECREF(kv);
        if (r == YMO_E_BAD_HEADER_NAME) {
            PyErr_Format(PyExc_ValueError, "invalid header name %R", PyTuple_GET_ITEM(pair, 0));
            return -1;
        }
        if (r == YMO_E_BAD_CONTENT_LENGTH) {
            PyErr_Format(PyExc_ValueError, "Content-Length %R is not a number of bytes",
                         PyTuple_GET_ITEM(pair, 1));
            return -1;
        }
        if (cl && *app_length) {
            PyErr_SetString(PyExc_ValueError, "more than one Content-Length header");
            return -1;
        }
        if (cl)
            *app_length = 1;
        if (r < 0) {
            PyErr_Format(PyExc_ValueError, "header %R: value contains a control character",
                         PyTuple_GET_ITEM(pair, 0));
            return -1;
        }
        if (te) {
            PyErr_SetString(PyExc_ValueError,
                            "Transfer-Encoding is hop-by-hop: the server sets it (PEP 3333)");
            return -1;
        }
    }
    return 0;
}

/* "200 OK": three digits, a space, a reason without control characters
 * (HTAB aside; RFC 9112 4). */
static int check_status(PyObject *status, int *code)
{
    if (!PyUnicode_Check(status)) {
        PyErr_Format(PyExc_TypeError, "status must be str, not %.100s", Py_TYPE(status)->tp_name);
        return -1;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(status);
    if (n < 4 || PyUnicode_READ_CHAR(status, 3) != ' ')
        goto bad;
    int c = 0;
    for (int i = 0; i < 3; i++) {
        Py_UCS4 ch = PyUnicode_READ_CHAR(status, i);
        if (ch < '0' || ch > '9')
            goto bad;
        c = c * 10 + (int)(ch - '0');
    }
    for (Py_ssize_t i = 4; i < n; i++) {
        Py_UCS4 ch = PyUnicode_READ_CHAR(status, i);
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f || ch > 0xff)
            goto bad;
    }
    if (c < 200) {
        PyErr_Format(PyExc_ValueError, "status %R: a final status is 200 or more", status);
        return -1;
    }
    *code = c;
    return 0;
bad:
    PyErr_Format(PyExc_ValueError, "status must look like '200 OK', not %R", status);
    return -1;
}

/* Defined with the type's methods, below. */
static PyMethodDef req_write_def;

static PyObject *start_response(YmoWSGIRequestObject *rq, PyObject *status, PyObject *headers,
                                PyObject *exc_info);

/* start_response(status, response_headers, exc_info=None) -> write */
static PyObject *req_call(YmoWSGIRequestObject *rq, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"status", "response_headers", "exc_info", NULL};
    PyObject *status, *headers, *exc_info = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O:start_response", kwlist, &status, &headers,
                                     &exc_info))
        return NULL;
    return start_response(rq, status, headers, exc_info);
}

/* The usual positional call, without building an argument tuple. */
static PyObject *req_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames)
{
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (kwnames == NULL && (n == 2 || n == 3))
        return start_response((YmoWSGIRequestObject *)self, args[0], args[1],
                              n == 3 ? args[2] : Py_None);
    /* Keywords: the general path. */
    PyObject *tuple = PyTuple_New(n);
    PyObject *kw = kwnames != NULL ? PyDict_New() : NULL;
    PyObject *r = NULL;
    if (tuple == NULL || (kwnames != NULL && kw == NULL))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    for (Py_ssize_t i = 0; kwnames != NULL && i < PyTuple_GET_SIZE(kwnames); i++)
        if (PyDict_SetItem(kw, PyTuple_GET_ITEM(kwnames, i), args[n + i]) < 0)
            goto done;
    r = req_call((YmoWSGIRequestObject *)self, tuple, kw);
done:
    Py_XDECREF(tuple);
    Py_XDECREF(kw);
    return r;
}

static PyObject *start_response(YmoWSGIRequestObject *rq, PyObject *status, PyObject *headers,
                                PyObject *exc_info)
{
    if (rq->conn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the request is over");
        return NULL;
    }
    if (exc_info != Py_None) {
        if (rq->head_sent) {
            /* PEP 3333: too late to change the response; re-raise. */
            PyObject *type = NULL, *val = NULL, *tb = NULL;
            if (PyTuple_Check(exc_info) && PyTuple_GET_SIZE(exc_info) == 3) {
                type = PyTuple_GET_ITEM(exc_info, 0);
                val = PyTuple_GET_ITEM(exc_info, 1);
                tb = PyTuple_GET_ITEM(exc_info, 2);
            }
            if (val == NULL || !PyExceptionInstance_Check(val)
                || !PyExceptionClass_Check(type) || !PyObject_TypeCheck(val, (PyTypeObject *)type)
                || (tb != Py_None && !PyTraceBack_Check(tb))) {
                PyErr_SetString(PyExc_TypeError, "exc_info must be the sys.exc_info() of an "
                                                 "exception being handled");
                return NULL;
            }
            PyErr_Restore(Py_NewRef(type), Py_NewRef(val), tb == Py_None ? NULL : Py_NewRef(tb));
            return NULL;
        }
    } else if (rq->status != NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "start_response() called twice without exc_info (PEP 3333)");
        return NULL;
    }
    int code, app_length;
    if (check_status(status, &code) < 0 || check_headers(headers, &app_length) < 0)
        return NULL;
    Py_XSETREF(rq->status, Py_NewRef(status));
    Py_XSETREF(rq->headers, Py_NewRef(headers));
    rq->code = code;
    rq->app_length = app_length;
    /* The bound write() straight from its method definition: an attribute
     * lookup would cost more than the rest of start_response. */
    return PyCFunction_New(&req_write_def, (PyObject *)rq);
}

/* Queue the response head; known_len < 0 when the body streams. */
static int send_head(YmoWSGIRequestObject *rq, int64_t known_len)
{
    ymo_conn_t *c = rq->conn;
    if (rq->status == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the application returned a body before calling start_response()");
        return -1;
    }
    if (rq->app_length)
        known_len = -1;
    ymo_outq_mark_t mark;
    ymo_outq_mark(&c->out, &mark);
    /* The reason phrase as the application gave it (checked latin-1 and
     * free of CR/LF by start_response). */
    PyObject *kr;
    const char *status;
    size_t slen;
    if (latin1(rq->status, "status", &kr, &status, &slen) < 0)
        goto fail;
    int br = ymo_http_response_begin_reason(c, rq->code, status + 4, slen - 4);
    Py_XDECREF(kr);
    if (br < 0)
        goto nomem;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(rq->headers); i++) {
        PyObject *pair = PyList_GET_ITEM(rq->headers, i);
        PyObject *kn, *kv;
        const char *n, *v;
        size_t nl, vl;
        /* Checked by start_response; the list may have changed since. */
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "response_headers changed after start_response()");
            goto fail;
        }
        if (latin1(PyTuple_GET_ITEM(pair, 0), "name", &kn, &n, &nl) < 0)
            goto fail;
        if (latin1(PyTuple_GET_ITEM(pair, 1), "value", &kv, &v, &vl) < 0) {
            Py_XDECREF(kn);
            goto fail;
        }
        int r = ymo_http_response_header(c, n, nl, v, vl);
        Py_XDECREF(kn);
        Py_XDECREF(kv);
        if (r == YMO_E_NOMEM)
            goto nomem;
        if (r < 0) {
            PyErr_Format(PyExc_ValueError, "invalid response header %R", pair);
            goto fail;
        }
    }
    if (ymo_http_response_end_head(c, known_len) < 0)
        goto nomem;
    rq->head_sent = 1;
    return 0;
nomem:
    PyErr_NoMemory();
fail:
    ymo_outq_rollback(&c->out, &mark);
    memset(ymo_http_response(c), 0, sizeof(ymo_http_response_t));
    return -1;
}

/* Queue one body chunk (a bytes object, referenced). */
static int send_chunk(YmoWSGIRequestObject *rq, PyObject *chunk)
{
    if (!PyBytes_Check(chunk)) {
        PyErr_Format(PyExc_TypeError, "the response body must be bytes, not %.100s (PEP 3333)",
                     Py_TYPE(chunk)->tp_name);
        return -1;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(chunk);
    if (len == 0)
        return 0;
    if (!rq->head_sent && send_head(rq, -1) < 0)
        return -1;
    int r = ymo_http_response_body(rq->conn, PyBytes_AS_STRING(chunk), (size_t)len,
                                   Py_NewRef(chunk));
    if (r == YMO_E_BAD_CONTENT_LENGTH)
        return 0;   /* past Content-Length: cut, and the connection closes */
    if (r < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *req_write(YmoWSGIRequestObject *rq, PyObject *data)
{
    if (req_live(rq) < 0)
        return NULL;
    if (rq->status == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "write() before start_response()");
        return NULL;
    }
    /* write() cannot be paused: it waits while too much is queued. */
    if (send_chunk(rq, data) < 0 || ymo__py_backpressure(rq->server, rq->conn) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static void req_dealloc(YmoWSGIRequestObject *rq)
{
    PyTypeObject *tp = Py_TYPE(rq);
    Py_XDECREF(rq->status);
    Py_XDECREF(rq->headers);
    Py_XDECREF(rq->env);
    Py_XDECREF(rq->input);
    Py_XDECREF(rq->result);
    Py_XDECREF(rq->iter);
    Py_XDECREF(rq->websocket);
    tp->tp_free(rq);
    Py_DECREF(tp);
}

static PyMethodDef req_methods[] = {
    {"write", (PyCFunction)req_write, METH_O, "write(data): the PEP 3333 write() callable."},
    {NULL, NULL, 0, NULL},
};
static PyMethodDef req_write_def = {"write", (PyCFunction)req_write, METH_O,
                                    "write(data): the PEP 3333 write() callable."};

static PyMemberDef req_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(YmoWSGIRequestObject, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot req_slots[] = {
    {Py_tp_doc, "The start_response callable of one WSGI request."},
    {Py_tp_dealloc, req_dealloc},
    {Py_tp_call, req_call},
    {Py_tp_methods, req_methods},
    {Py_tp_members, req_members},
    {0, NULL},
};

static PyType_Spec req_spec = {
    .name = "yimmo.StartResponse",
    .basicsize = sizeof(YmoWSGIRequestObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION
             | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = req_slots,
};

/* --- wsgi.input ----------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    YmoWSGIRequestObject *rq;   /* strong */
    int eof;
} YmoInputObject;

/* Next run of body bytes, at most max; 0 at the end. The pointer is valid
 * until the next call. -1 with an exception set on failure. */
static Py_ssize_t input_next(YmoInputObject *in, const char **data, size_t max)
{
    YmoWSGIRequestObject *rq = in->rq;
    if (in->eof)
        return 0;
    if (rq->conn == NULL) {
        PyErr_SetString(PyExc_ValueError, "wsgi.input read after the request ended");
        return -1;
    }
    if (ymo__py_check_owner(rq->thread, "wsgi.input", "the application") < 0)
        return -1;
    if (rq->conn->flags & YMO_CONN_CLOSED) {
        PyErr_SetString(PyExc_ConnectionError, "the client went away");
        return -1;
    }
    ssize_t n;
    YMO_BLOCKING(rq->server, n = ymo_http_body_stream(rq->conn, data, max));
    if (n == 0)
        in->eof = 1;
    if (n < 0) {
        in->eof = 1;
        PyErr_Format(PyExc_ConnectionError, "the request body could not be read: %s",
                     ymo_strerror((int)n));
        return -1;
    }
    return n;
}

static Py_ssize_t size_arg(PyObject *const *args, Py_ssize_t nargs, const char *fn)
{
    if (nargs > 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most one argument", fn);
        return -2;
    }
    if (nargs == 0 || args[0] == Py_None)
        return -1;
    Py_ssize_t n = PyNumber_AsSsize_t(args[0], PyExc_OverflowError);
    if (n == -1 && PyErr_Occurred())
        return -2;
    return n < 0 ? -1 : n;
}

/* Read up to size bytes (all with size < 0), stopping after a newline when
 * line is set. */
static PyObject *input_read_impl(YmoInputObject *in, Py_ssize_t size, int line)
{
    PyObject *out = NULL;       /* bytearray once more than one run is needed */
    PyObject *first = NULL;
    for (;;) {
        size_t want = size < 0 ? (size_t)1 << 30 : (size_t)size;
        if (out != NULL)
            want -= (size_t)PyByteArray_GET_SIZE(out);
        else if (first != NULL)
            want -= (size_t)PyBytes_GET_SIZE(first);
        if (size >= 0 && want == 0)
            break;
        const char *data;
        Py_ssize_t n = input_next(in, &data, want);
        if (n < 0)
            goto error;
        if (n == 0)
            break;
        int done = 0;
        if (line) {
            const char *nl = memchr(data, '\n', (size_t)n);
            if (nl != NULL) {
                Py_ssize_t keep = nl - data + 1;
                ymo_http_body_unread(in->rq->conn, (size_t)(n - keep));
                n = keep;
                done = 1;
            }
        }
        if (first == NULL && out == NULL) {
            first = PyBytes_FromStringAndSize(data, n);
            if (first == NULL)
                goto error;
        } else {
            if (out == NULL) {
                out = PyByteArray_FromObject(first);
                Py_CLEAR(first);
                if (out == NULL)
                    goto error;
            }
            Py_ssize_t old = PyByteArray_GET_SIZE(out);
            if (PyByteArray_Resize(out, old + n) < 0)
                goto error;
            memcpy(PyByteArray_AS_STRING(out) + old, data, (size_t)n);
        }
        if (done)
            break;
    }
    if (out != NULL) {
        PyObject *b = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(out),
                                                PyByteArray_GET_SIZE(out));
        Py_DECREF(out);
        return b;
    }
    if (first != NULL)
        return first;
    return PyBytes_FromStringAndSize("", 0);
error:
    Py_XDECREF(out);
    Py_XDECREF(first);
    return NULL;
}

static PyObject *input_read(YmoInputObject *in, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t size = size_arg(args, nargs, "read");
    if (size == -2)
        return NULL;
    return input_read_impl(in, size, 0);
}

static PyObject *input_readline(YmoInputObject *in, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t size = size_arg(args, nargs, "readline");
    if (size == -2)
        return NULL;
    return input_read_impl(in, size, 1);
}

static PyObject *input_readlines(YmoInputObject *in, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t hint = size_arg(args, nargs, "readlines");
    if (hint == -2)
        return NULL;
    PyObject *lines = PyList_New(0);
    if (lines == NULL)
        return NULL;
    Py_ssize_t total = 0;
    for (;;) {
        PyObject *line = input_read_impl(in, -1, 1);
        if (line == NULL) {
            Py_DECREF(lines);
            return NULL;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(line);
        if (n == 0) {
            Py_DECREF(line);
            break;
        }
        int r = PyList_Append(lines, line);
        Py_DECREF(line);
        if (r < 0) {
            Py_DECREF(lines);
            return NULL;
        }
        total += n;
        if (hint > 0 && total >= hint)
            break;
    }
    return lines;
}

static PyObject *input_iternext(YmoInputObject *in)
{
    PyObject *line = input_read_impl(in, -1, 1);
    if (line != NULL && PyBytes_GET_SIZE(line) == 0) {
        Py_DECREF(line);
        return NULL;    /* StopIteration */
    }
    return line;
}

static void input_dealloc(YmoInputObject *in)
{
    PyTypeObject *tp = Py_TYPE(in);
    Py_XDECREF(in->rq);
    tp->tp_free(in);
    Py_DECREF(tp);
}

static PyMethodDef input_methods[] = {
    {"read", (PyCFunction)(void (*)(void))input_read, METH_FASTCALL,
     "read(size=-1): up to size bytes of the body (all of it by default)."},
    {"readline", (PyCFunction)(void (*)(void))input_readline, METH_FASTCALL,
     "readline(size=-1): one line, at most size bytes."},
    {"readlines", (PyCFunction)(void (*)(void))input_readlines, METH_FASTCALL,
     "readlines(hint=-1): the remaining lines."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot input_slots[] = {
    {Py_tp_doc, "wsgi.input: the request body, read from the connection as it arrives."},
    {Py_tp_dealloc, input_dealloc},
    {Py_tp_iter, PyObject_SelfIter},
    {Py_tp_iternext, input_iternext},
    {Py_tp_methods, input_methods},
    {0, NULL},
};

static PyType_Spec input_spec = {
    .name = "yimmo.InputStream",
    .basicsize = sizeof(YmoInputObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = input_slots,
};

/* --- The environ ---------------------------------------------------------- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* PATH_INFO: the path percent-decoded, as latin-1 (PEP 3333). */
static PyObject *decode_path(const char *p, size_t len)
{
    if (memchr(p, '%', len) == NULL)
        return PyUnicode_DecodeLatin1(p, (Py_ssize_t)len, NULL);
    char stack[1024] = {0};
    char *buf = len <= sizeof(stack) ? stack : PyMem_Malloc(len);
    if (buf == NULL)
        return PyErr_NoMemory();
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int h, l;
        if (p[i] == '%' && i + 2 < len && (h = hexval(p[i + 1])) >= 0
            && (l = hexval(p[i + 2])) >= 0) {
            buf[o++] = (char)(h * 16 + l);
            i += 2;
        } else {
            buf[o++] = p[i];
        }
    }
    PyObject *r = PyUnicode_DecodeLatin1(buf, (Py_ssize_t)o, NULL);
    if (buf != stack)
        PyMem_Free(buf);
    return r;
}

/* PATH_INFO: the path with SCRIPT_NAME taken off the front when the path
 * lies under it (PEP 3333 URL reconstruction). *outside is set when it does
 * not: that request's SCRIPT_NAME is then empty, so that SCRIPT_NAME +
 * PATH_INFO still names what was asked for. */
static PyObject *path_info(PyObject *script_name, const char *p, size_t len, int *outside)
{
    PyObject *path = decode_path(p, len);
    Py_ssize_t sl = PyUnicode_GET_LENGTH(script_name);
    *outside = 0;
    if (path == NULL || sl == 0)
        return path;
    Py_ssize_t pl = PyUnicode_GET_LENGTH(path);
    if (pl >= sl && PyUnicode_Tailmatch(path, script_name, 0, sl, -1) == 1
        && (pl == sl || PyUnicode_READ_CHAR(path, sl) == '/')) {
        PyObject *rest = PyUnicode_Substring(path, sl, pl);
        Py_DECREF(path);
        return rest;
    }
    *outside = 1;
    return path;
}

static int set_item(PyObject *env, PyObject *key, PyObject *value)
{
    if (value == NULL)
        return -1;
    int r = PyDict_SetItem(env, key, value);
    Py_DECREF(value);
    return r;
}

/* The HTTP_* key for a lowercased header name; NULL with no exception for a
 * name holding '_' (it could pose as another header once mapped). */
static PyObject *header_key(ymo_py_state *st, const char *n, size_t len)
{
    for (int i = 0; i < YMO_WSGI_COMMON_HEADERS; i++) {
        const char *c = common_headers[i];
        if (c[0] == n[0] && strlen(c) == len && memcmp(c, n, len) == 0)
            return Py_NewRef(st->wsgi_header_keys[i]);
    }
    char stack[256];
    char *buf = len + 5 <= sizeof(stack) ? stack : PyMem_Malloc(len + 5);
    if (buf == NULL)
        return PyErr_NoMemory();
    memcpy(buf, "HTTP_", 5);
    for (size_t i = 0; i < len; i++) {
        char ch = n[i];
        if (ch == '_') {
            if (buf != stack)
                PyMem_Free(buf);
            return NULL;
        }
        buf[5 + i] = ch == '-' ? '_' : (ch >= 'a' && ch <= 'z') ? (char)(ch - 32) : ch;
    }
    PyObject *k = PyUnicode_DecodeLatin1(buf, (Py_ssize_t)(len + 5), NULL);
    if (buf != stack)
        PyMem_Free(buf);
    return k;
}

static int add_header(ymo_py_state *st, PyObject *env, const char *base,
                      const ymo_http_header_t *h)
{
    const char *n = base + h->name.off;
    PyObject *key;
    if (h->id == YMO_HDR_CONTENT_TYPE)
        key = Py_NewRef(st->wsgi_keys[WK_CONTENT_TYPE]);
    else if (h->id == YMO_HDR_CONTENT_LENGTH)
        key = Py_NewRef(st->wsgi_keys[WK_CONTENT_LENGTH]);
    else if ((key = header_key(st, n, h->name.len)) == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *value = PyUnicode_DecodeLatin1(base + h->value.off, h->value.len, NULL);
    if (value == NULL) {
        Py_DECREF(key);
        return -1;
    }
    PyObject *old = PyDict_GetItemWithError(env, key);     /* borrowed */
    if (old != NULL) {
        /* RFC 9110 5.3: repeated fields combine with commas; cookies with
         * "; " (RFC 6265 5.4). */
        const char *sep = (h->name.len == 6 && memcmp(n, "cookie", 6) == 0) ? "; " : ",";
        PyObject *joined = PyUnicode_FromFormat("%U%s%U", old, sep, value);
        Py_DECREF(value);
        value = joined;
    } else if (PyErr_Occurred()) {
        Py_DECREF(value);
        value = NULL;
    }
    int r = set_item(env, key, value);
    Py_DECREF(key);
    return r;
}

/* --- Trusted proxies (forwarded_allow_ips) -------------------------------- */

/* One "ADDR" or "ADDR/BITS" into *p; 0, or -1 when it is neither. */
static int parse_proxy(const char *s, size_t len, ymo_py_proxy_t *p)
{
    char buf[INET6_ADDRSTRLEN + 4];
    if (len == 0 || len >= sizeof(buf))
        return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *slash = strchr(buf, '/');
    long bits = -1;
    if (slash != NULL) {
        char *end;
        *slash = '\0';
        bits = strtol(slash + 1, &end, 10);
        if (slash[1] < '0' || slash[1] > '9' || *end != '\0' || bits > 128)
            return -1;
    }
    struct in_addr a4;
    memset(p->addr, 0, sizeof(p->addr));
    if (inet_pton(AF_INET, buf, &a4) == 1) {
        if (bits > 32)
            return -1;
        p->addr[10] = p->addr[11] = 0xff;
        memcpy(p->addr + 12, &a4, 4);
        p->bits = bits < 0 ? 128 : 96 + (int)bits;
        return 0;
    }
    if (inet_pton(AF_INET6, buf, p->addr) == 1) {
        p->bits = bits < 0 ? 128 : (int)bits;
        return 0;
    }
    return -1;
}

/* Add the comma-separated entries of s to the array. */
static int add_proxies(PyObject *str, ymo_py_proxy_t **out, int *n, int *any)
{
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(str, &len);
    if (s == NULL)
        return -1;
    Py_ssize_t i = 0;
    while (i <= len) {
        Py_ssize_t j = i;
        while (j < len && s[j] != ',')
            j++;
        Py_ssize_t a = i, b = j;
        while (a < b && (s[a] == ' ' || s[a] == '\t'))
            a++;
        while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t'))
            b--;
        i = j + 1;
        if (a == b)
            continue;
        if (b - a == 1 && s[a] == '*') {
            *any = 1;
            continue;
        }
        ymo_py_proxy_t *grown = realloc(*out, (size_t)(*n + 1) * sizeof(**out));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        *out = grown;
        if (parse_proxy(s + a, (size_t)(b - a), &grown[*n]) < 0) {
            PyObject *bad = PyUnicode_DecodeUTF8(s + a, b - a, "replace");
            if (bad != NULL) {
                PyErr_Format(PyExc_ValueError,
                             "forwarded_allow_ips: %R is not an IP address or network", bad);
                Py_DECREF(bad);
            }
            return -1;
        }
        (*n)++;
    }
    return 0;
}

int ymo__py_parse_proxies(PyObject *o, ymo_py_proxy_t **out, int *n, int *any)
{
    *out = NULL;
    *n = *any = 0;
    if (o == NULL || o == Py_None)
        return 0;
    if (PyUnicode_Check(o)) {
        if (add_proxies(o, out, n, any) == 0)
            return 0;
        goto error;
    }
    PyObject *it = PyObject_GetIter(o);
    if (it == NULL) {
        PyErr_Format(PyExc_TypeError, "forwarded_allow_ips must be a str or an iterable of "
                     "str, not %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        int r = PyUnicode_Check(item) ? add_proxies(item, out, n, any) : -2;
        if (r == -2)
            PyErr_Format(PyExc_TypeError, "forwarded_allow_ips: %R is not a str", item);
        Py_DECREF(item);
        if (r < 0)
            break;
    }
    Py_DECREF(it);
    if (!PyErr_Occurred())
        return 0;
error:
    free(*out);
    *out = NULL;
    *n = *any = 0;
    return -1;
}

int ymo__py_peer_proxied(const ymo_py_proxy_t *p, int n, int any, const ymo_conn_t *c)
{
    if (n == 0 && !any)
        return 0;
    uint8_t a[16] = {0};
    const struct sockaddr_storage *ss = &c->peer;
    if (ss->ss_family == AF_INET) {
        a[10] = a[11] = 0xff;
        memcpy(a + 12, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    } else if (ss->ss_family == AF_INET6) {
        memcpy(a, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    } else {
        return 1;   /* a Unix socket: only the host's own processes reach it */
    }
    if (any)
        return 1;
    for (int i = 0; i < n; i++) {
        int full = p[i].bits / 8, rest = p[i].bits % 8;
        if (memcmp(a, p[i].addr, (size_t)full) != 0)
            continue;
        if (rest == 0 || ((a[full] ^ p[i].addr[full]) & (0xff00 >> rest)) == 0)
            return 1;
    }
    return 0;
}

/* gunicorn's secure_scheme_headers: from a trusted proxy, each says https
 * with its value, http with any other. */
static const struct {
    const char *name;
    size_t len;
    const char *secure;
} scheme_headers[] = {
    {"x-forwarded-proto", 17, "https"},
    {"x-forwarded-protocol", 20, "ssl"},
    {"x-forwarded-ssl", 15, "on"},
};

/* Fold h into *scheme (-1 none yet, 0 http, 1 https); proxies that disagree
 * get http, never a claim of https. */
static void forwarded_scheme(const char *base, const ymo_http_header_t *h, int *scheme)
{
    for (size_t i = 0; i < sizeof(scheme_headers) / sizeof(scheme_headers[0]); i++) {
        if (h->name.len != scheme_headers[i].len
            || memcmp(base + h->name.off, scheme_headers[i].name, h->name.len) != 0)
            continue;
        size_t sl = strlen(scheme_headers[i].secure);
        int https = h->value.len == sl
                    && strncasecmp(base + h->value.off, scheme_headers[i].secure, sl) == 0;
        *scheme = *scheme < 0 ? https : (*scheme && https);
        return;
    }
}

/* A str of the decimal digits of v, without printf. */
static PyObject *uint_str(unsigned long v)
{
    char tmp[24];
    Py_ssize_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    PyObject *s = PyUnicode_New(n, 127);
    if (s == NULL)
        return NULL;
    Py_UCS1 *d = PyUnicode_1BYTE_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++)
        d[i] = (Py_UCS1)tmp[n - 1 - i];
    return s;
}

/* The environ every request starts from: the constant entries set, the
 * per-request ones present (so the copy has its keys laid out) and room for
 * the headers. PyDict_Copy of it is much cheaper than twenty insertions. */
static PyObject *environ_template(ymo_py_state *st, const ymo_py_environ_src_t *src)
{
    PyObject **K = st->wsgi_keys;
    PyObject *env = _PyDict_NewPresized(40);
    if (env == NULL)
        return NULL;
    static const int per_request[] = {
        WK_REQUEST_METHOD, WK_PATH_INFO, WK_QUERY_STRING, WK_RAW_URI, WK_SERVER_PROTOCOL,
        WK_SERVER_NAME, WK_SERVER_PORT, WK_REMOTE_ADDR, WK_REMOTE_PORT, WK_WSGI_INPUT,
        WK_WSGI_ERRORS,
    };
    for (size_t i = 0; i < sizeof(per_request) / sizeof(per_request[0]); i++)
        if (PyDict_SetItem(env, K[per_request[i]], Py_None) < 0)
            goto error;
    if (PyDict_SetItem(env, K[WK_SCRIPT_NAME], src->script_name) < 0
        || PyDict_SetItem(env, K[WK_WSGI_VERSION], st->wsgi_version) < 0
        || PyDict_SetItem(env, K[WK_WSGI_URL_SCHEME], src->url_scheme) < 0
        || PyDict_SetItem(env, K[WK_WSGI_MULTITHREAD], src->multithread ? Py_True : Py_False) < 0
        || PyDict_SetItem(env, K[WK_WSGI_MULTIPROCESS], src->multiprocess ? Py_True : Py_False) < 0
        || PyDict_SetItem(env, K[WK_WSGI_RUN_ONCE], Py_False) < 0
        || PyDict_SetItem(env, K[WK_WSGI_INPUT_TERMINATED], Py_True) < 0
        || PyDict_SetItem(env, K[WK_WSGI_FILE_WRAPPER], src->file_wrapper) < 0)
        goto error;
    return env;
error:
    Py_DECREF(env);
    return NULL;
}

/* The environ for the request p parsed in base: a copy of template with
 * the request's entries. The server and yimmo.parsers.build_wsgi_environ
 * both come here, so the fuzzer sees what applications see. */
static PyObject *environ_build(ymo_py_state *st, PyObject *template, const ymo_http_parser_t *p,
                               const char *base, const ymo_py_environ_src_t *src, PyObject *input)
{
    PyObject **K = st->wsgi_keys;
    PyObject *env = PyDict_Copy(template);
    if (env == NULL)
        return NULL;

    int outside;
    if (set_item(env, K[WK_REQUEST_METHOD],
                 ymo__py_method_str(st, base + p->method.off, p->method.len)) < 0
        || set_item(env, K[WK_PATH_INFO],
                    path_info(src->script_name, base + p->path.off, p->path.len, &outside)) < 0
        || (outside && PyDict_SetItem(env, K[WK_SCRIPT_NAME], st->str_empty) < 0)
        || set_item(env, K[WK_QUERY_STRING],
                    (p->flags & YMO_HTTP_F_HAS_QUERY)
                        ? PyUnicode_DecodeLatin1(base + p->query.off, p->query.len, NULL)
                        : Py_NewRef(st->str_empty)) < 0
        || set_item(env, K[WK_RAW_URI],
                    PyUnicode_DecodeLatin1(base + p->target.off, p->target.len, NULL)) < 0
        || PyDict_SetItem(env, K[WK_SERVER_PROTOCOL],
                          p->version_minor == 0 ? st->str_http10 : st->str_http11) < 0)
        goto error;

    const ymo_http_header_t *host = NULL;
    int scheme = -1;
    for (uint32_t i = 0; i < p->nheaders; i++) {
        const ymo_http_header_t *h = &p->headers[i];
        if (h->id == YMO_HDR_HOST && host == NULL)
            host = h;
        else if (src->proxied && h->id == YMO_HDR_OTHER)
            forwarded_scheme(base, h, &scheme);
        if (add_header(st, env, base, h) < 0)
            goto error;
    }
    if (scheme >= 0 && set_item(env, K[WK_WSGI_URL_SCHEME],
                                PyUnicode_FromString(scheme ? "https" : "http")) < 0)
        goto error;

    /* SERVER_NAME and SERVER_PORT from Host when there is one; from the
     * request-target when it is in absolute form (RFC 9112 3.2.2: the
     * target's authority wins over Host). */
    const char *hv = host != NULL ? base + host->value.off : NULL;
    size_t hl = host != NULL ? host->value.len : 0;
    const char *t = base + p->target.off;
    if (p->target.len > 0 && t[0] != '/' && p->path.off > p->target.off) {
        /* "scheme://authority[/path][?query]", as the parser checked it. The
         * authority ends at the first '/' or '?': with no path, p->path is
         * the second slash of "//" and cannot mark the end. */
        const char *sep = memchr(t, ':', p->target.len);
        size_t start = sep != NULL ? (size_t)(sep - t) + 3 : 0;
        size_t end = start;
        while (end < p->target.len && t[end] != '/' && t[end] != '?')
            end++;
        if (sep != NULL && start < end && sep[1] == '/' && sep[2] == '/') {
            hv = t + start;
            hl = end - start;
            /* ... and HTTP_HOST, which applications read first: Host and
             * the target must not name two hosts to two readers. */
            if (set_item(env, st->wsgi_header_keys[0],     /* "HTTP_HOST" */
                         PyUnicode_DecodeLatin1(hv, (Py_ssize_t)hl, NULL)) < 0)
                goto error;
        }
    }
    if (hv != NULL && hl > 0) {
        size_t colon = hl;
        if (hv[0] == '[') {
            const char *rb = memchr(hv, ']', hl);
            if (rb != NULL && (size_t)(rb - hv) + 1 < hl && rb[1] == ':')
                colon = (size_t)(rb - hv) + 1;
        } else {
            const char *cp = memchr(hv, ':', hl);
            if (cp != NULL)
                colon = (size_t)(cp - hv);
        }
        if (set_item(env, K[WK_SERVER_NAME], PyUnicode_DecodeLatin1(hv, (Py_ssize_t)colon, NULL)) < 0)
            goto error;
        if (colon + 1 < hl) {
            if (set_item(env, K[WK_SERVER_PORT],
                         PyUnicode_DecodeLatin1(hv + colon + 1, (Py_ssize_t)(hl - colon - 1), NULL)) < 0)
                goto error;
        } else {
            int https = src->tls || scheme == 1
                        || (scheme < 0
                            && PyUnicode_CompareWithASCIIString(src->url_scheme, "https") == 0);
            if (set_item(env, K[WK_SERVER_PORT], PyUnicode_FromString(https ? "443" : "80")) < 0)
                goto error;
        }
    } else if (src->local != NULL
               && (src->local->ss_family == AF_INET || src->local->ss_family == AF_INET6)) {
        /* RFC 3875 4.1.14-15: the address the request came in on. */
        char name[INET6_ADDRSTRLEN];
        int lport;
        ymo_sockaddr_host(src->local, name, &lport);
        if (set_item(env, K[WK_SERVER_NAME], PyUnicode_FromString(name)) < 0
            || set_item(env, K[WK_SERVER_PORT], uint_str((unsigned long)lport)) < 0)
            goto error;
    } else if (PyDict_SetItem(env, K[WK_SERVER_NAME], src->server_name) < 0
               || PyDict_SetItem(env, K[WK_SERVER_PORT], src->server_port) < 0) {
        goto error;
    }

    if (set_item(env, K[WK_REMOTE_ADDR],
                 PyUnicode_DecodeLatin1(src->remote, (Py_ssize_t)src->remote_len, NULL)) < 0
        || set_item(env, K[WK_REMOTE_PORT], uint_str((unsigned long)src->remote_port)) < 0)
        goto error;

    /* The server's error stream, or sys.stderr as it is now (it may have
     * been replaced), looked up with interned names: PySys_GetObject()
     * builds its key on every call. */
    PyObject *errors = src->errors != NULL ? Py_NewRef(src->errors)
                                           : PyObject_GetAttr(st->sys_module, st->str_stderr);
    if (errors == NULL)
        PyErr_Clear();
    if (PyDict_SetItem(env, K[WK_WSGI_INPUT], input) < 0
        || set_item(env, K[WK_WSGI_ERRORS], errors != NULL ? errors : Py_NewRef(Py_None)) < 0)
        goto error;
    return env;
error:
    Py_DECREF(env);
    return NULL;
}

/* A live connection's environ: the server's settings, c's addresses. */
static PyObject *build_environ(YmoServerObject *srv, ymo_conn_t *c, PyObject *input)
{
    const char *base;
    const ymo_http_parser_t *p = ymo_http_request(c, &base);
    ymo_py_environ_src_t src = {
        .script_name = srv->script_name,
        .url_scheme = srv->url_scheme,
        .file_wrapper = srv->file_wrapper,
        .multithread = srv->nthreads > 1,  /* one worker thread runs one call at a time */
        .multiprocess = srv->multiprocess,
        .server_name = srv->server_name,
        .server_port = srv->server_port,
        .local = c->local,
        .tls = ymo_tls_active(c),
        .proxied = ymo__py_peer_proxied(srv->proxies, srv->nproxies, srv->any_proxy, c),
        .errors = srv->errors,
    };
    src.remote = ymo_conn_peer_host(c, &src.remote_len, &src.remote_port);
    if (srv->environ_template == NULL
        && (srv->environ_template = environ_template(srv->st, &src)) == NULL)
        return NULL;
    PyObject *env = environ_build(srv->st, srv->environ_template, p, base, &src, input);
    /* The https and SSL_* entries need the live TLS session. */
    if (env != NULL && ymo__py_tls_environ(srv->st, env, c) < 0)
        Py_CLEAR(env);
    return env;
}

PyObject *ymo__py_wsgi_environ(ymo_py_state *st, const ymo_http_parser_t *p, const char *base,
                               const ymo_py_environ_src_t *src, PyObject *input)
{
    PyObject *template = environ_template(st, src);
    if (template == NULL)
        return NULL;
    PyObject *env = environ_build(st, template, p, base, src, input);
    Py_DECREF(template);
    return env;
}

/* --- Running the application -------------------------------------------- */

static double now_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A list or tuple of bytes: its total length, or -1 when it is not that. */
static int64_t sequence_length(PyObject *result)
{
    if (!PyList_CheckExact(result) && !PyTuple_CheckExact(result))
        return -1;
    PyObject *seq = result;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(b))
            return -1;
        total += PyBytes_GET_SIZE(b);
    }
    return total;
}

/* wsgi.file_wrapper over a regular file: send the rest of it with
 * sendfile(). Returns 1 when sent that way, 0 to fall back to iterating,
 * -1 on error. */
static int send_file(YmoWSGIRequestObject *rq, PyObject *result)
{
    PyObject *filelike = PyObject_GetAttrString(result, "filelike");
    if (filelike == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *fileno = PyObject_CallMethod(filelike, "fileno", NULL);
    /* The logical position: a buffered file object may have read ahead of
     * its descriptor's offset. */
    PyObject *tell = fileno ? PyObject_CallMethod(filelike, "tell", NULL) : NULL;
    Py_DECREF(filelike);
    long long logical = tell ? PyLong_AsLongLong(tell) : -1;
    Py_XDECREF(tell);
    if (fileno == NULL || tell == NULL || logical < 0) {
        Py_XDECREF(fileno);
        PyErr_Clear();
        return 0;
    }
    long fd = PyLong_AsLong(fileno);
    Py_DECREF(fileno);
    if (fd < 0 || fd > 0x7fffffff) {
        PyErr_Clear();
        return 0;
    }
    struct stat st;
    off_t pos = (off_t)logical;
    if (fstat((int)fd, &st) < 0 || !S_ISREG(st.st_mode) || pos > st.st_size)
        return 0;
    size_t len = (size_t)(st.st_size - pos);
    if (!rq->head_sent && send_head(rq, (int64_t)len) < 0)
        return -1;
    int dfd = fcntl((int)fd, F_DUPFD_CLOEXEC, 0);
    if (dfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int r = ymo_http_response_file(rq->conn, dfd, (uint64_t)pos, len);
    if (r < 0 && r != YMO_E_BAD_CONTENT_LENGTH) {
        PyErr_NoMemory();
        return -1;
    }
    return 1;
}

/* Consume the iterable, streaming each chunk as it comes. Returns 0 when
 * it is exhausted, -1 on error, 1 when the loop thread must not wait for a
 * slow client: the response is suspended at the high-water mark and goes on
 * when the output drains (a worker thread waits instead). */
static int pump(YmoWSGIRequestObject *rq)
{
    ymo_conn_t *c = rq->conn;
    PyObject *chunk;
    while ((chunk = PyIter_Next(rq->iter)) != NULL) {
        int r = send_chunk(rq, chunk);
        Py_DECREF(chunk);
        if (r < 0)
            return -1;
        /* Streamed as produced: the client gets each chunk while the
         * application makes the next. */
        if (ymo_conn_write_now(c) < 0)
            ymo_conn_close(c);
        if (c->flags & YMO_CONN_CLOSED)
            return 0;       /* the client left: stop producing */
        if (c->out.bytes >= c->server->cfg.output_high_water) {
            if (!(c->flags & YMO_CONN_CHECKED_OUT))
                return 1;
            if (ymo__py_backpressure(rq->server, c) < 0)
                return -1;
        }
    }
    if (PyErr_Occurred())
        return -1;
    if (!rq->head_sent && send_head(rq, 0) < 0)
        return -1;
    return 0;
}

static int send_result(YmoWSGIRequestObject *rq, PyObject *result)
{
    if (ymo_http_response(rq->conn)->status == 101)
        return 0;   /* the application took the connection as a WebSocket */
    if (Py_IS_TYPE(result, (PyTypeObject *)rq->server->file_wrapper)) {
        int r = send_file(rq, result);
        if (r != 0)
            return r < 0 ? -1 : 0;
    }
    int64_t known = rq->head_sent ? -1 : sequence_length(result);
    if (known >= 0) {
        /* The whole body is here: frame it with Content-Length and send
         * the head with it. It is in memory already, so it is queued by
         * reference without waiting; a client that does not read stops
         * the connection's next request from being parsed instead. */
        if (send_head(rq, known) < 0)
            return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(result);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (send_chunk(rq, PySequence_Fast_GET_ITEM(result, i)) < 0)
                return -1;
        }
        return 0;
    }
    rq->iter = PyObject_GetIter(result);
    if (rq->iter == NULL)
        return -1;
    return pump(rq);
}

static void log_access(YmoServerObject *srv, PyObject *env, YmoWSGIRequestObject *rq,
                       ymo_conn_t *c, double started)
{
    ymo_http_response_t *resp = ymo_http_response(c);
    PyObject *status = rq->status && rq->head_sent ? Py_NewRef(rq->status)
                                                  : PyUnicode_FromFormat("%d", resp->status);
    PyObject *headers = rq->headers && rq->head_sent ? Py_NewRef(rq->headers) : PyList_New(0);
    PyObject *r = NULL;
    if (status != NULL && headers != NULL)
        r = PyObject_CallFunction(srv->access_log, "OOOKd", env, status, headers,
                                  (unsigned long long)resp->sent, now_monotonic() - started);
    if (r == NULL)
        ymo__py_log_exception(srv->st, "exception in access_log");
    Py_XDECREF(r);
    Py_XDECREF(status);
    Py_XDECREF(headers);
}

/* The application raised: log it with the request it raised on, in
 * gunicorn's words ("Error handling request GET /path?query"). The method
 * and target come from the environ, when the application left them str. */
static void app_failed(YmoServerObject *srv, ymo_conn_t *c, PyObject *env)
{
    char msg[512] = "Error handling request";
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *m = env ? PyDict_GetItem(env, srv->st->wsgi_keys[WK_REQUEST_METHOD]) : NULL;
    PyObject *u = env ? PyDict_GetItem(env, srv->st->wsgi_keys[WK_RAW_URI]) : NULL;
    const char *ms = m && PyUnicode_Check(m) ? PyUnicode_AsUTF8(m) : NULL;
    const char *us = u && PyUnicode_Check(u) ? PyUnicode_AsUTF8(u) : NULL;
    if (ms != NULL && us != NULL)
        snprintf(msg, sizeof(msg), "Error handling request %.32s %.400s%s",
                 ms, us, strlen(us) > 400 ? "..." : "");
    PyErr_Clear();      /* a failed UTF-8 conversion only shortens the message */
    PyErr_SetRaisedException(exc);
    ymo__py_app_failed(srv, c, msg);
}

/* The response is over (or failed, with the error set): close() the
 * iterable, finish or cut the response, log the access, let go. */
static void finish(YmoWSGIRequestObject *rq, int failed)
{
    YmoServerObject *srv = rq->server;
    ymo_conn_t *c = rq->conn;
    if (failed)
        app_failed(srv, c, rq->env);
    Py_CLEAR(rq->iter);
    PyObject *result = rq->result;
    rq->result = NULL;
    if (result != NULL) {
        /* PEP 3333: close() is called however the iteration ended. */
        if (!PyList_CheckExact(result) && !PyTuple_CheckExact(result)
            && !PyBytes_CheckExact(result)) {
            PyObject *close = PyObject_GetAttrString(result, "close");
            if (close != NULL) {
                PyObject *r = PyObject_CallNoArgs(close);
                if (r == NULL)
                    ymo__py_log_exception(srv->st, "exception in the response's close()");
                Py_XDECREF(r);
                Py_DECREF(close);
            } else {
                PyErr_Clear();
            }
        }
        Py_DECREF(result);
    }
    if (!(c->flags & YMO_CONN_CLOSED)) {
        ymo_http_response_t *resp = ymo_http_response(c);
        if (failed && !rq->head_sent && !(resp->flags & YMO_RESP_FINISHED))
            ymo__py_simple_response(c, 500, "Internal Server Error\n");
        else if (failed)
            resp->flags |= YMO_RESP_CLOSE;      /* cut the response short */
        else if (!(resp->flags & YMO_RESP_FINISHED) && ymo_http_response_finish(c) < 0)
            resp->flags |= YMO_RESP_CLOSE;      /* shorter than Content-Length */
    }
    if (srv->access_log != NULL)
        log_access(srv, rq->env, rq, c, rq->started);
    if (rq->websocket != NULL)
        ymo__py_wsgi_ws_detach(rq->websocket, failed);
    rq->conn = NULL;
    Py_CLEAR(rq->env);
    Py_CLEAR(rq->input);
    Py_DECREF(rq);      /* the request's own reference, from wsgi_run */
}

/* Keep rq (and its reference) on c until its output drains. */
static void suspend(YmoWSGIRequestObject *rq)
{
    ymo_http_set_exchange(rq->conn, rq);
    ymo_http_suspend(rq->conn);
}

void ymo__py_wsgi_run(YmoServerObject *srv, ymo_conn_t *c)
{
    ymo_py_state *st = srv->st;
    YmoInputObject *in = NULL;
    YmoWSGIRequestObject *rq = PyObject_New(YmoWSGIRequestObject, st->wsgi_request_type);
    if (rq == NULL)
        goto nomem;
    rq->vectorcall = req_vectorcall;
    rq->conn = c;
    rq->server = srv;
    rq->status = rq->headers = NULL;
    rq->env = rq->input = rq->result = rq->iter = rq->websocket = NULL;
    rq->code = rq->head_sent = rq->app_length = 0;
    rq->started = srv->access_log ? now_monotonic() : 0;
    rq->thread = pthread_self();
    in = PyObject_New(YmoInputObject, st->input_type);
    if (in == NULL)
        goto nomem;
    in->rq = (YmoWSGIRequestObject *)Py_NewRef(rq);
    in->eof = 0;
    rq->input = (PyObject *)in;     /* steals in */
    rq->env = build_environ(srv, c, rq->input);
    if (rq->env == NULL)
        goto nomem;
    if (ymo_http_request(c, &(const char *){NULL})->flags & YMO_HTTP_F_UPGRADE) {
        /* An upgrade: the application may take the WebSocket. */
        rq->websocket = ymo__py_wsgi_ws_new(srv, c);
        if (rq->websocket == NULL
            || PyDict_SetItemString(rq->env, "yimmo.websocket", rq->websocket) < 0)
            goto nomem;
    }

    PyObject *args[2] = {rq->env, (PyObject *)rq};
    rq->result = PyObject_Vectorcall(srv->handler, args, 2, NULL);
    int r = rq->result == NULL ? -1 : send_result(rq, rq->result);
    if (r == 1) {
        suspend(rq);
        return;
    }
    finish(rq, r < 0);
    return;
nomem:
    ymo__py_log_exception(st, "could not set up a WSGI request");
    if (rq != NULL) {
        rq->conn = NULL;
        Py_CLEAR(rq->input);    /* it refers back to rq */
        Py_DECREF(rq);
    }
    ymo_http_respond_error(c, 503, "out of memory");
}

void ymo__py_wsgi_resume(YmoServerObject *srv, ymo_conn_t *c)
{
    YmoWSGIRequestObject *rq = ymo_http_exchange(c);
    int r = 0;
    /* A closed connection only needs the clean-up. */
    if (!(c->flags & YMO_CONN_CLOSED))
        r = pump(rq);
    if (r == 1) {
        suspend(rq);
        return;
    }
    finish(rq, r < 0);
}

/* --- Module set-up ---------------------------------------------------------- */

int ymo__py_wsgi_init(PyObject *module, ymo_py_state *st)
{
    for (int i = 0; i < WK__COUNT; i++) {
        st->wsgi_keys[i] = PyUnicode_InternFromString(wsgi_key_names[i]);
        if (st->wsgi_keys[i] == NULL)
            return -1;
    }
    for (int i = 0; i < YMO_WSGI_COMMON_HEADERS; i++) {
        const char *n = common_headers[i];
        char buf[64] = "HTTP_";
        size_t len = strlen(n);
        for (size_t j = 0; j < len; j++)
            buf[5 + j] = n[j] == '-' ? '_' : (char)(n[j] >= 'a' && n[j] <= 'z' ? n[j] - 32 : n[j]);
        buf[5 + len] = '\0';
        st->wsgi_header_keys[i] = PyUnicode_InternFromString(buf);
        if (st->wsgi_header_keys[i] == NULL)
            return -1;
    }
    st->wsgi_version = Py_BuildValue("(ii)", 1, 0);
    if (st->wsgi_version == NULL)
        return -1;
    st->wsgi_request_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &req_spec, NULL);
    if (st->wsgi_request_type == NULL)
        return -1;
    st->input_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &input_spec, NULL);
    if (st->input_type == NULL)
        return -1;
    return 0;
}

int ymo__py_wsgi_traverse(ymo_py_state *st, visitproc visit, void *arg)
{
    Py_VISIT(st->wsgi_request_type);
    Py_VISIT(st->input_type);
    return 0;
}

void ymo__py_wsgi_clear(ymo_py_state *st)
{
    for (int i = 0; i < WK__COUNT; i++)
        Py_CLEAR(st->wsgi_keys[i]);
    for (int i = 0; i < YMO_WSGI_COMMON_HEADERS; i++)
        Py_CLEAR(st->wsgi_header_keys[i]);
    Py_CLEAR(st->wsgi_version);
    Py_CLEAR(st->wsgi_request_type);
    Py_CLEAR(st->input_type);
}
