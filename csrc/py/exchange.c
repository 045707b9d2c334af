/*
 * yimmo.Exchange: one request and its response, handed to the handler.
 * Attributes are made lazily from the parser's spans; the object is cut from
 * its connection when the handler returns, after which only what was
 * already read stays available.
 */
#include "py/py_internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

typedef struct {
    PyObject_HEAD
    ymo_conn_t *conn;           /* NULL once the exchange is over */
    YmoServerObject *server;    /* borrowed: valid while conn is set */
    PyObject *method, *path, *query, *target, *version, *headers, *body, *remote_addr, *tls;
    size_t read_pos;
    pthread_t thread;           /* the one running the handler, which owns conn */
    int starting;               /* start_response is reading the header pairs */
} YmoExchangeObject;

static ymo_py_state *ex_state(YmoExchangeObject *ex)
{
    return ymo__py_state_from_type(Py_TYPE(ex));
}

static int check_live(YmoExchangeObject *ex)
{
    if (ex->conn == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the exchange is over (its handler returned)");
        return -1;
    }
    return ymo__py_check_owner(ex->thread, "an Exchange", "its handler");
}

static const ymo_http_parser_t *request(YmoExchangeObject *ex, const char **base)
{
    return ymo_http_request(ex->conn, base);
}

/* --- Request attributes -------------------------------------------------- */

static PyObject *span_str(const char *base, ymo_span_t sp)
{
    return PyUnicode_DecodeLatin1(base + sp.off, (Py_ssize_t)sp.len, NULL);
}

#define CACHED(field, make)                     \
    do {                                        \
        if (ex->field != NULL)                  \
            return Py_NewRef(ex->field);        \
        if (check_live(ex) < 0)                 \
            return NULL;                        \
        const char *base;                       \
        const ymo_http_parser_t *p = request(ex, &base); \
        (void)p;                                \
        ex->field = (make);                     \
        return Py_XNewRef(ex->field);           \
    } while (0)

static PyObject *ex_method(YmoExchangeObject *ex, void *c)
{
    CACHED(method, ymo__py_method_str(ex_state(ex), base + p->method.off, p->method.len));
}

static PyObject *ex_path(YmoExchangeObject *ex, void *c)
{
    CACHED(path, span_str(base, p->path));
}

static PyObject *ex_query(YmoExchangeObject *ex, void *c)
{
    CACHED(query, (p->flags & YMO_HTTP_F_HAS_QUERY) ? span_str(base, p->query)
                                                    : Py_NewRef(ex_state(ex)->str_empty));
}

static PyObject *ex_target(YmoExchangeObject *ex, void *c)
{
    CACHED(target, span_str(base, p->target));
}

static PyObject *ex_version(YmoExchangeObject *ex, void *c)
{
    ymo_py_state *st = ex_state(ex);
    CACHED(version, Py_NewRef(p->version_minor == 0 ? st->str_http10 : st->str_http11));
}

static PyObject *make_headers(YmoExchangeObject *ex, const char *base,
                              const ymo_http_parser_t *p)
{
    PyObject *pairs = PyList_New(p->nheaders);
    if (pairs == NULL)
        return NULL;
    for (uint32_t i = 0; i < p->nheaders; i++) {
        const ymo_http_header_t *h = &p->headers[i];
        PyObject *name = span_str(base, h->name);
        PyObject *value = name ? span_str(base, h->value) : NULL;
        PyObject *pair = value ? PyTuple_Pack(2, name, value) : NULL;
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (pair == NULL) {
            Py_DECREF(pairs);
            return NULL;
        }
        PyList_SET_ITEM(pairs, i, pair);    /* steals pair */
    }
    return ymo__py_headers_new(ex_state(ex), pairs);   /* steals pairs */
}

static PyObject *ex_headers(YmoExchangeObject *ex, void *c)
{
    CACHED(headers, make_headers(ex, base, p));
}

static PyObject *ex_remote_addr(YmoExchangeObject *ex, void *c)
{
    if (ex->remote_addr != NULL)
        return Py_NewRef(ex->remote_addr);
    if (check_live(ex) < 0)
        return NULL;
    size_t len;
    int port;
    const char *host = ymo_conn_peer_host(ex->conn, &len, &port);
    ex->remote_addr = Py_BuildValue("(s#i)", host, (Py_ssize_t)len, port);
    return Py_XNewRef(ex->remote_addr);
}

static PyObject *ex_tls(YmoExchangeObject *ex, void *c)
{
    CACHED(tls, ymo__py_tls_info(ex->conn));
}

/* Make sure the whole body is in; for a request that waits on 100-continue
 * this sends it and reads, blocking this loop thread for one client. */
static int ensure_body(YmoExchangeObject *ex, const char **data, size_t *len)
{
    if (check_live(ex) < 0)
        return -1;
    int r = ymo_http_body(ex->conn, data, len);
    if (r == YMO_AGAIN) {
        YMO_BLOCKING(ex->server, r = ymo_http_body_wait(ex->conn));
        if (r < 0) {
            PyErr_Format(PyExc_ConnectionError, "the request body could not be read: %s",
                         ymo_strerror(r));
            return -1;
        }
        r = ymo_http_body(ex->conn, data, len);
    }
    return r;
}

static PyObject *ex_body(YmoExchangeObject *ex, void *c)
{
    if (ex->body != NULL)
        return Py_NewRef(ex->body);
    const char *data;
    size_t len;
    if (ensure_body(ex, &data, &len) < 0)
        return NULL;
    ex->body = PyBytes_FromStringAndSize(data, (Py_ssize_t)len);
    return Py_XNewRef(ex->body);
}

static PyObject *ex_read(YmoExchangeObject *ex, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n = -1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "read() takes at most one argument (size)");
        return NULL;
    }
    if (nargs == 1 && args[0] != Py_None) {
        n = PyLong_AsSsize_t(args[0]);
        if (n == -1 && PyErr_Occurred())
            return NULL;
    }
    const char *data;
    size_t len;
    /* A method: the handler's, while it runs, even with the body read; not
     * from inside the header pairs of a response being started. */
    if (check_live(ex) < 0)
        return NULL;
    if (ex->starting) {
        PyErr_SetString(PyExc_RuntimeError, "read() while a response's headers were read");
        return NULL;
    }
    if (ex->body != NULL) {
        data = PyBytes_AS_STRING(ex->body);
        len = (size_t)PyBytes_GET_SIZE(ex->body);
    } else if (ensure_body(ex, &data, &len) < 0) {
        return NULL;
    }
    size_t left = len - ex->read_pos;
    size_t take = n < 0 || (size_t)n > left ? left : (size_t)n;
    PyObject *out = PyBytes_FromStringAndSize(data + ex->read_pos, (Py_ssize_t)take);
    if (out != NULL)
        ex->read_pos += take;
    return out;
}

/* --- Responses ----------------------------------------------------------- */

/* A header name or value as bytes: str must be latin-1. */
static int field_bytes(PyObject *o, const char *what, PyObject **keep, const char **p,
                       size_t *len)
{
    *keep = NULL;
    if (PyUnicode_Check(o)) {
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
        o = *keep;
    } else if (!PyBytes_Check(o)) {
        PyErr_Format(PyExc_TypeError, "header %s must be str or bytes, not %.100s", what,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    *p = PyBytes_AS_STRING(o);
    *len = (size_t)PyBytes_GET_SIZE(o);
    return 0;
}

static int add_header(ymo_conn_t *c, PyObject *pair)
{
    if (PyUnicode_Check(pair) || PyBytes_Check(pair)) {
        PyErr_Format(PyExc_TypeError, "each header must be a (name, value) pair, not %.100s",
                     Py_TYPE(pair)->tp_name);
        return -1;
    }
    PyObject *seq = PySequence_Fast(pair, "each header must be a (name, value) pair");
    if (seq == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) != 2) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "each header must be a (name, value) pair");
        return -1;
    }
    PyObject *name = PySequence_Fast_GET_ITEM(seq, 0);
    PyObject *value = PySequence_Fast_GET_ITEM(seq, 1);
    PyObject *kn, *kv;
    const char *n, *v;
    size_t nl, vl;
    int rc = -1;
    if (field_bytes(name, "name", &kn, &n, &nl) < 0)
        goto done0;
    if (field_bytes(value, "value", &kv, &v, &vl) < 0)
        goto done1;
    int r = ymo_http_response_header(c, n, nl, v, vl);
    switch (r) {
    case 0:
        rc = 0;
        break;
    case YMO_E_BAD_HEADER_NAME:
        PyErr_Format(PyExc_ValueError, "invalid header name %R", name);
        break;
    case YMO_E_BAD_HEADER_VALUE:
        PyErr_Format(PyExc_ValueError, "header %R: value contains a control character", name);
        break;
    case YMO_E_BAD_TRANSFER_ENCODING:
        PyErr_SetString(PyExc_ValueError,
                        "Transfer-Encoding is set by the server, not the application");
        break;
    case YMO_E_BAD_CONTENT_LENGTH:
        PyErr_Format(PyExc_ValueError, "invalid or repeated Content-Length %R", value);
        break;
    default:
        PyErr_NoMemory();
        break;
    }
    Py_XDECREF(kv);
done1:
    Py_XDECREF(kn);
done0:
    Py_DECREF(seq);
    return rc;
}

static int check_client(YmoExchangeObject *ex)
{
    if (ex->conn->flags & YMO_CONN_CLOSED) {
        PyErr_SetString(PyExc_ConnectionError, "the client went away");
        return -1;
    }
    return 0;
}

/* Queue the status line and header fields; on failure nothing stays queued. */
static int start_response(YmoExchangeObject *ex, PyObject *status_o, PyObject *headers,
                          int64_t known_len)
{
    if (check_live(ex) < 0)
        return -1;
    if (ex->starting) {
        PyErr_SetString(PyExc_RuntimeError, "a response started while its headers were read");
        return -1;
    }
    unsigned long long status = 0;
    if (status_o == Py_None) {
        PyErr_SetString(PyExc_TypeError, "status must be an int, not NoneType");
        return -1;
    }
    if (ymo__py_uint_arg(status_o, "status", 200, 999, &status) < 0)
        return -1;
    /* The headers as a list first: a mapping's items() or an iterable run
     * the application's code, which must be done before the response is
     * touched (and may not start one itself: checked after). */
    PyObject *list = NULL;
    if (headers != NULL && headers != Py_None) {
        int mapping = PyDict_Check(headers)
                      || (!PyList_Check(headers) && !PyTuple_Check(headers)
                          && PyObject_HasAttrString(headers, "items"));
        PyObject *src = mapping ? PyObject_CallMethod(headers, "items", NULL) : Py_NewRef(headers);
        if (src != NULL) {
            list = PySequence_List(src);
            Py_DECREF(src);
        }
        if (list == NULL) {
            if (PyErr_ExceptionMatches(PyExc_TypeError)) {
                PyErr_Format(PyExc_TypeError,
                             "headers must be a list of (name, value) pairs or a mapping, not %.100s",
                             Py_TYPE(headers)->tp_name);
            }
            return -1;
        }
    }
    if (check_live(ex) < 0 || check_client(ex) < 0) {
        Py_XDECREF(list);
        return -1;
    }
    ymo_conn_t *c = ex->conn;
    ymo_http_response_t *resp = ymo_http_response(c);
    if (resp->flags & YMO_RESP_STARTED) {
        Py_XDECREF(list);
        PyErr_SetString(PyExc_RuntimeError, "the response has already started");
        return -1;
    }
    ymo_outq_mark_t mark;
    ymo_outq_mark(&c->out, &mark);
    if (ymo_http_response_begin(c, (int)status) < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    if (list != NULL) {
        ex->starting = 1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
            if (add_header(c, PyList_GET_ITEM(list, i)) < 0) {
                ex->starting = 0;
                goto fail;
            }
        }
        ex->starting = 0;
        Py_CLEAR(list);
    }
    /* respond() knows its body: a declared length that differs would send
     * a response cut short or overlong, so nothing is sent. (HEAD, 204
     * and 304 declare the length of a body they do not carry.) */
    if (known_len >= 0 && (resp->flags & YMO_RESP_APP_LENGTH)
        && resp->content_length != (uint64_t)known_len && !(resp->flags & YMO_RESP_NO_BODY)
        && status != 204 && status != 304) {
        PyErr_Format(PyExc_ValueError,
                     "Content-Length %llu does not match the body's %lld bytes",
                     (unsigned long long)resp->content_length, (long long)known_len);
        goto fail;
    }
    if (ymo_http_response_end_head(c, known_len) < 0) {
        PyErr_NoMemory();
        goto fail;
    }
    return 0;
fail:
    Py_XDECREF(list);
    ymo_outq_rollback(&c->out, &mark);
    memset(resp, 0, sizeof(*resp));
    return -1;
}

/* Body data as (pointer, length, owner): bytes are referenced, str encoded
 * to UTF-8, other buffers copied. *owner is a new reference or NULL. */
static int body_data(PyObject *o, const char **p, Py_ssize_t *len, PyObject **owner)
{
    *owner = NULL;
    if (o == NULL || o == Py_None) {
        *p = "";
        *len = 0;
        return 0;
    }
    if (PyBytes_Check(o)) {
        *p = PyBytes_AS_STRING(o);
        *len = PyBytes_GET_SIZE(o);
        *owner = Py_NewRef(o);
        return 0;
    }
    if (PyUnicode_Check(o)) {
        PyObject *b = PyUnicode_AsUTF8String(o);
        if (b == NULL)
            return -1;
        *p = PyBytes_AS_STRING(b);
        *len = PyBytes_GET_SIZE(b);
        *owner = b;
        return 0;
    }
    if (PyObject_CheckBuffer(o)) {
        PyObject *b = PyBytes_FromObject(o);
        if (b == NULL)
            return -1;
        *p = PyBytes_AS_STRING(b);
        *len = PyBytes_GET_SIZE(b);
        *owner = b;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "body must be bytes, str or a buffer, not %.100s",
                 Py_TYPE(o)->tp_name);
    return -1;
}

static int send_body(YmoExchangeObject *ex, const char *p, Py_ssize_t len, PyObject *owner)
{
    /* The owner reference passes to the output queue. */
    int r = ymo_http_response_body(ex->conn, p, (size_t)len, owner);
    if (r == YMO_E_BAD_CONTENT_LENGTH) {
        PyErr_SetString(PyExc_ValueError, "body longer than the declared Content-Length");
        return -1;
    }
    if (r < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

int ymo__py_backpressure(YmoServerObject *srv, ymo_conn_t *c)
{
    if (c->out.bytes < c->server->cfg.output_high_water)
        return 0;
    int r;
    YMO_BLOCKING(srv, r = ymo_conn_flush_sync(c, c->server->cfg.send_timeout));
    if (r < 0) {
        ymo_conn_close(c);
        PyErr_Format(PyExc_ConnectionError, "the client went away: %s", ymo_strerror(r));
        return -1;
    }
    return 0;
}

/* On a worker thread, output goes out as the handler makes it, not when it
 * returns: what is queued is written now, as far as the socket takes it
 * without waiting (the loop writes the rest after the handler). On the
 * loop thread the handler holds every connection anyway: the flush after
 * it batches its pieces into one write. */
static int push(YmoExchangeObject *ex)
{
    if (!(ex->conn->flags & YMO_CONN_CHECKED_OUT))
        return 0;
    if (ymo_conn_write_now(ex->conn) < 0)
        ymo_conn_close(ex->conn);
    return check_client(ex);
}

static PyObject *ex_respond(YmoExchangeObject *ex, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"status", "headers", "body", NULL};
    PyObject *status, *headers = NULL, *body = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OO:respond", kwlist, &status, &headers, &body))
        return NULL;
    if (check_live(ex) < 0 || check_client(ex) < 0)
        return NULL;
    const char *p;
    Py_ssize_t len;
    PyObject *owner;
    if (body_data(body, &p, &len, &owner) < 0)
        return NULL;
    if (start_response(ex, status, headers, len) < 0) {
        Py_XDECREF(owner);
        return NULL;
    }
    int r = send_body(ex, p, len, owner);
    ymo_http_response_finish(ex->conn);
    if (r < 0)
        return NULL;
    /* On a worker thread the handler may go on after answering. */
    if (push(ex) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *ex_start(YmoExchangeObject *ex, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"status", "headers", NULL};
    PyObject *status, *headers = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O:start", kwlist, &status, &headers))
        return NULL;
    if (check_live(ex) < 0 || check_client(ex) < 0)
        return NULL;
    if (start_response(ex, status, headers, -1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *ex_write(YmoExchangeObject *ex, PyObject *data)
{
    if (check_live(ex) < 0 || check_client(ex) < 0)
        return NULL;
    ymo_http_response_t *resp = ymo_http_response(ex->conn);
    if (!(resp->flags & YMO_RESP_HEAD_DONE) || (resp->flags & YMO_RESP_FINISHED)) {
        PyErr_SetString(PyExc_RuntimeError,
                        (resp->flags & YMO_RESP_FINISHED) ? "the response has ended"
                                                          : "write() before start()");
        return NULL;
    }
    const char *p;
    Py_ssize_t len;
    PyObject *owner;
    if (body_data(data, &p, &len, &owner) < 0)
        return NULL;
    if (send_body(ex, p, len, owner) < 0 || push(ex) < 0
        || ymo__py_backpressure(ex->server, ex->conn) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *ex_end(YmoExchangeObject *ex, PyObject *unused)
{
    if (check_live(ex) < 0)
        return NULL;
    ymo_http_response_t *resp = ymo_http_response(ex->conn);
    if (!(resp->flags & YMO_RESP_HEAD_DONE)) {
        PyErr_SetString(PyExc_RuntimeError, "end() before start()");
        return NULL;
    }
    if (resp->flags & YMO_RESP_FINISHED)
        Py_RETURN_NONE;
    if (ymo_http_response_finish(ex->conn) == YMO_E_BAD_CONTENT_LENGTH) {
        PyErr_SetString(PyExc_ValueError, "body shorter than the declared Content-Length");
        return NULL;
    }
    if (push(ex) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* --- Running the handler ------------------------------------------------- */

void ymo__py_simple_response(ymo_conn_t *c, int status, const char *text)
{
    ymo_http_response_t *resp = ymo_http_response(c);
    size_t len = strlen(text);
    static const char ct[] = "text/plain; charset=utf-8";
    memset(resp, 0, sizeof(*resp));
    if (ymo_http_response_begin(c, status) < 0
        || ymo_http_response_header(c, "Content-Type", 12, ct, sizeof(ct) - 1) < 0
        || ymo_http_response_end_head(c, (int64_t)len) < 0
        || ymo_http_response_body(c, text, len, NULL) < 0
        || ymo_http_response_finish(c) < 0)
        resp->flags |= YMO_RESP_CLOSE;
}

/* A request for a WebSocket path: upgrade it (1), or 0 for plain HTTP. */
static int ws_route(YmoServerObject *srv, YmoExchangeObject *ex)
{
    PyObject *path = ex_path(ex, NULL);
    PyObject *handler = path ? PyDict_GetItemWithError(srv->ws_routes, path) : NULL;  /* borrowed */
    int done = 0;
    if (handler != NULL) {
        PyObject *query = ex_query(ex, NULL);
        PyObject *headers = ex_headers(ex, NULL);
        PyObject *addr = ex_remote_addr(ex, NULL);
        if (query && headers && addr)
            done = ymo__py_ws_upgrade(srv, ex->conn, handler, path, query, headers, addr);
        Py_XDECREF(query);
        Py_XDECREF(headers);
        Py_XDECREF(addr);
    }
    if (PyErr_Occurred()) {
        ymo__py_log_exception(srv->st, "WebSocket upgrade");
        if (!done) {
            ymo__py_simple_response(ex->conn, 500, "Internal Server Error\n");
            done = 1;
        }
    }
    Py_XDECREF(path);
    return done;
}

void ymo__py_exchange_run(YmoServerObject *srv, ymo_conn_t *c)
{
    ymo_py_state *st = srv->st;
    YmoExchangeObject *ex = PyObject_New(YmoExchangeObject, st->exchange_type);
    if (ex == NULL) {
        PyErr_Clear();
        ymo_http_respond_error(c, 503, "out of memory");
        return;
    }
    ex->conn = c;
    ex->server = srv;
    ex->method = ex->path = ex->query = ex->target = ex->version = NULL;
    ex->headers = ex->body = ex->remote_addr = ex->tls = NULL;
    ex->read_pos = 0;
    ex->starting = 0;
    ex->thread = pthread_self();
    ymo_http_set_exchange(c, ex);

    PyObject *arg = (PyObject *)ex;
    if (srv->ws_routes != NULL && ws_route(srv, ex)) {
        ex->conn = NULL;
        Py_DECREF(ex);
        return;
    }
    PyObject *r = PyObject_Vectorcall(srv->handler, &arg, 1, NULL);
    ymo_http_response_t *resp = ymo_http_response(c);
    if (r == NULL) {
        ymo__py_app_failed(srv, c, "exception in handler");
        if (!(c->flags & YMO_CONN_CLOSED)) {
            if (!(resp->flags & YMO_RESP_STARTED))
                ymo__py_simple_response(c, 500, "Internal Server Error\n");
            else
                resp->flags |= YMO_RESP_CLOSE;  /* cut the response short */
        }
    } else {
        Py_DECREF(r);
        if (!(c->flags & YMO_CONN_CLOSED)) {
            if (!(resp->flags & YMO_RESP_STARTED)) {
                PyObject *m = ex_method(ex, NULL), *p = m != NULL ? ex_path(ex, NULL) : NULL;
                PyErr_Clear();
                ymo__py_log(st, 40, "handler returned without answering %R %R; sent 500",
                            m ? m : Py_None, p ? p : Py_None);
                Py_XDECREF(m);
                Py_XDECREF(p);
                ymo__py_simple_response(c, 500, "Internal Server Error\n");
            } else if (!(resp->flags & YMO_RESP_FINISHED)) {
                if (ymo_http_response_finish(c) < 0)
                    resp->flags |= YMO_RESP_CLOSE;
            }
        }
    }
    ex->conn = NULL;
    Py_DECREF(ex);
}

/* --- Type ---------------------------------------------------------------- */

static void ex_dealloc(YmoExchangeObject *ex)
{
    PyTypeObject *tp = Py_TYPE(ex);
    Py_XDECREF(ex->method);
    Py_XDECREF(ex->path);
    Py_XDECREF(ex->query);
    Py_XDECREF(ex->target);
    Py_XDECREF(ex->version);
    Py_XDECREF(ex->tls);
    Py_XDECREF(ex->headers);
    Py_XDECREF(ex->body);
    Py_XDECREF(ex->remote_addr);
    tp->tp_free(ex);
    Py_DECREF(tp);
}

static PyObject *ex_repr(YmoExchangeObject *ex)
{
    if (ex->method != NULL && ex->path != NULL)
        return PyUnicode_FromFormat("<yimmo.Exchange %U %U>", ex->method, ex->path);
    return PyUnicode_FromString("<yimmo.Exchange>");
}

static PyGetSetDef ex_getset[] = {
    {"method", (getter)ex_method, NULL, "The request method, e.g. 'GET'.", NULL},
    {"path", (getter)ex_path, NULL, "The request path as sent (not percent-decoded).", NULL},
    {"query", (getter)ex_query, NULL, "The query string without '?' ('' if none).", NULL},
    {"target", (getter)ex_target, NULL, "The request-target exactly as sent.", NULL},
    {"version", (getter)ex_version, NULL, "'HTTP/1.1' or 'HTTP/1.0'.", NULL},
    {"headers", (getter)ex_headers, NULL, "The request's yimmo.Headers.", NULL},
    {"body", (getter)ex_body, NULL,
     "The whole request body as bytes (sends 100 Continue if the client waits for it).", NULL},
    {"remote_addr", (getter)ex_remote_addr, NULL, "The client's (host, port).", NULL},
    {"tls", (getter)ex_tls, NULL,
     "What the TLS connection negotiated (version, cipher, alpn, server_name, peer_cert,\n"
     "peer_subject) as a dict, or None on a plain connection.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef ex_methods[] = {
    {"respond", (PyCFunction)(void (*)(void))ex_respond, METH_VARARGS | METH_KEYWORDS,
     "respond(status, headers=None, body=b''): send a whole response."},
    {"start", (PyCFunction)(void (*)(void))ex_start, METH_VARARGS | METH_KEYWORDS,
     "start(status, headers=None): begin a streamed response."},
    {"write", (PyCFunction)ex_write, METH_O, "write(data): send part of a streamed body."},
    {"end", (PyCFunction)ex_end, METH_NOARGS, "end(): finish a streamed response."},
    {"read", (PyCFunction)(void (*)(void))ex_read, METH_FASTCALL,
     "read(size=-1): read the request body as a stream; b'' at its end."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ex_slots[] = {
    {Py_tp_doc, "An HTTP request and its response, handed to a yimmo.Server handler."},
    {Py_tp_dealloc, ex_dealloc},
    {Py_tp_repr, ex_repr},
    {Py_tp_getset, ex_getset},
    {Py_tp_methods, ex_methods},
    {0, NULL},
};

static PyType_Spec ex_spec = {
    .name = "yimmo.Exchange",
    .basicsize = sizeof(YmoExchangeObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ex_slots,
};

int ymo__py_exchange_init(PyObject *module, ymo_py_state *st)
{
    st->exchange_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ex_spec, NULL);
    if (st->exchange_type == NULL)
        return -1;
    return PyModule_AddType(module, st->exchange_type);
}
