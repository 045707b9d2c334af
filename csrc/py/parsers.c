/*
 * The HTTP request parser, callable from Python on bytes alone (tests,
 * fuzzers, tools). The server does not go through here.
 *
 * A parsed request is a 12-tuple:
 *
 *   (method: str, target: str, path: str, query: str,
 *    version: str ("HTTP/1.0" or "HTTP/1.1"),
 *    headers: list[tuple[bytes, bytes]] (names lowercased, in order),
 *    body: bytes (decoded: chunk framing and trailers removed),
 *    consumed: int (bytes of the request, empty lines before it and body
 *                   framing included),
 *    keep_alive: bool, chunked: bool, expect_continue: bool, upgrade: bool)
 *
 * Strings are decoded as latin-1, which cannot fail. For an absolute-form
 * target with no path, path is "/"; for OPTIONS * it is "*"; for CONNECT it
 * is the authority.
 */
#include "py/py_internal.h"

#include "yimmo/http.h"

/* max_headers sizes an allocation, so it gets a ceiling of its own. */
#define MAX_HEADERS_CEILING 65536u

typedef struct {
    PyObject_HEAD
    ymo_http_limits_t limits;
    ymo_http_parser_t parser;
    ymo_http_header_t *headers; /* limits.max_headers entries, at least one */
    char *buf;                  /* bytes fed and not yet part of a returned request */
    size_t len;
    size_t cap;
    size_t body_pos;            /* next body byte, from buf; valid in_body */
    int in_body;
    int error;                  /* sticky; raised by every later feed() */
    char *body;                 /* decoded body of the request in progress */
    size_t body_len;
    size_t body_cap;
} YmoRequestParserObject;

/* Grow *pbuf to hold need bytes. */
static int reserve(char **pbuf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap : 256;
    while (ncap < need) {
        if (ncap > PY_SSIZE_T_MAX / 2) {
            ncap = need;
            break;
        }
        ncap *= 2;
    }
    char *nb = PyMem_Realloc(*pbuf, ncap);
    if (nb == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *pbuf = nb;
    *cap = ncap;
    return 0;
}

static PyObject *span_str(const char *base, ymo_span_t s)
{
    return PyUnicode_DecodeLatin1(base + s.off, (Py_ssize_t)s.len, NULL);
}

/* Build the request tuple from a finished parse. New reference. */
static PyObject *build_request(ymo_py_state *st, const ymo_http_parser_t *p, const char *base,
                               const char *body, size_t body_len, size_t consumed)
{
    PyObject *headers = NULL, *tuple = NULL;
    uint32_t f = p->flags;

    headers = PyList_New((Py_ssize_t)p->nheaders);
    if (headers == NULL)
        goto error;
    for (uint32_t k = 0; k < p->nheaders; k++) {
        const ymo_http_header_t *h = &p->headers[k];
        PyObject *pair = Py_BuildValue("(y#y#)", base + h->name.off, (Py_ssize_t)h->name.len,
                                       base + h->value.off, (Py_ssize_t)h->value.len);
        if (pair == NULL)
            goto error;
        PyList_SET_ITEM(headers, (Py_ssize_t)k, pair); /* steals pair */
    }

    tuple = PyTuple_New(12);
    if (tuple == NULL)
        goto error;
    /* PyTuple_SET_ITEM steals each item; a NULL one is caught below. */
    PyTuple_SET_ITEM(tuple, 0, ymo__py_method_str(st, base + p->method.off, p->method.len));
    PyTuple_SET_ITEM(tuple, 1, span_str(base, p->target));
    PyTuple_SET_ITEM(tuple, 2, span_str(base, p->path));
    PyTuple_SET_ITEM(tuple, 3,
                     (f & YMO_HTTP_F_HAS_QUERY) ? span_str(base, p->query)
                                                : Py_NewRef(st->str_empty));
    PyTuple_SET_ITEM(tuple, 4, Py_NewRef(p->version_minor ? st->str_http11 : st->str_http10));
    PyTuple_SET_ITEM(tuple, 5, headers); /* steals headers */
    headers = NULL;
    PyTuple_SET_ITEM(tuple, 6, PyBytes_FromStringAndSize(body, (Py_ssize_t)body_len));
    PyTuple_SET_ITEM(tuple, 7, PyLong_FromSize_t(consumed));
    PyTuple_SET_ITEM(tuple, 8, PyBool_FromLong(f & YMO_HTTP_F_KEEPALIVE));
    PyTuple_SET_ITEM(tuple, 9, PyBool_FromLong(f & YMO_HTTP_F_CHUNKED));
    PyTuple_SET_ITEM(tuple, 10, PyBool_FromLong(f & YMO_HTTP_F_EXPECT_CONTINUE));
    PyTuple_SET_ITEM(tuple, 11, PyBool_FromLong(f & YMO_HTTP_F_UPGRADE));
    for (Py_ssize_t k = 0; k < 12; k++)
        if (PyTuple_GET_ITEM(tuple, k) == NULL)
            goto error;
    return tuple;

error:
    Py_XDECREF(headers);
    Py_XDECREF(tuple);
    return NULL;
}

/* ---- RequestParser ---------------------------------------------------- */

static int get_limit(PyObject *o, const char *name, uint64_t max, uint64_t *out)
{
    if (o == NULL)
        return 0;
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow < 0 || (overflow == 0 && v < 0))
        goto range;
    if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            goto range;
        }
        if (u > max)
            goto range;
        *out = u;
        return 0;
    }
    if ((uint64_t)v > max)
        goto range;
    *out = (uint64_t)v;
    return 0;
range:
    PyErr_Format(PyExc_ValueError, "%s must be between 0 and %llu", name,
                 (unsigned long long)max);
    return -1;
}

static PyObject *rp_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_request_line", "max_field_size", "max_header_bytes",
                             "max_headers", "max_body", NULL};
    PyObject *o_rl = NULL, *o_fs = NULL, *o_hb = NULL, *o_nh = NULL, *o_body = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$OOOOO:RequestParser", kwlist, &o_rl, &o_fs,
                                     &o_hb, &o_nh, &o_body))
        return NULL;

    ymo_http_limits_t lim;
    ymo_http_limits_default(&lim);
    uint64_t rl = lim.max_request_line, fs = lim.max_field_size, hb = lim.max_header_bytes,
             nh = lim.max_headers, body = lim.max_body;
    if (get_limit(o_rl, "max_request_line", UINT32_MAX, &rl) < 0
        || get_limit(o_fs, "max_field_size", UINT32_MAX, &fs) < 0
        || get_limit(o_hb, "max_header_bytes", UINT32_MAX, &hb) < 0
        || get_limit(o_nh, "max_headers", MAX_HEADERS_CEILING, &nh) < 0
        || get_limit(o_body, "max_body", UINT64_MAX, &body) < 0)
        return NULL;
    lim.max_request_line = (uint32_t)rl;
    lim.max_field_size = (uint32_t)fs;
    lim.max_header_bytes = (uint32_t)hb;
    lim.max_headers = (uint32_t)nh;
    lim.max_body = body;

    YmoRequestParserObject *self = (YmoRequestParserObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->limits = lim;
    self->headers = PyMem_Calloc(nh ? (size_t)nh : 1, sizeof(ymo_http_header_t));
    if (self->headers == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    ymo_http_parser_init(&self->parser, &self->limits, self->headers);
    return (PyObject *)self;
}

static void rp_dealloc(PyObject *op)
{
    YmoRequestParserObject *self = (YmoRequestParserObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    PyMem_Free(self->headers);
    PyMem_Free(self->buf);
    PyMem_Free(self->body);
    tp->tp_free(op);
    Py_DECREF(tp);
}

/*
 * Run the parser over what is buffered, appending finished requests to out.
 * Returns 0, or a YMO_E* code (now sticky), or -1 with a Python exception.
 */
static int rp_run(YmoRequestParserObject *self, ymo_py_state *st, PyObject *out)
{
    ymo_http_parser_t *p = &self->parser;
    size_t start = 0; /* first byte of the request in progress */
    int rc = 0;

    if (self->buf == NULL)
        return 0; /* nothing was ever fed */

    for (;;) {
        if (!self->in_body) {
            rc = ymo_http_parse_head(p, self->buf + start, self->len - start);
            if (rc == YMO_AGAIN) {
                rc = 0;
                break;
            }
            if (rc != YMO_OK)
                break;
            self->in_body = 1;
            self->body_pos = start + p->head_len;
            self->body_len = 0;
        }
        size_t used, doff, dlen;
        rc = ymo_http_parse_body(p, self->buf + self->body_pos, self->len - self->body_pos,
                                 &used, &doff, &dlen);
        if (dlen != 0) {
            if (reserve(&self->body, &self->body_cap, self->body_len + dlen) < 0) {
                rc = -1;
                break;
            }
            memcpy(self->body + self->body_len, self->buf + self->body_pos + doff, dlen);
            self->body_len += dlen;
        }
        self->body_pos += used;
        if (rc == YMO_AGAIN) {
            rc = 0;
            if (self->body_pos < self->len)
                continue;
            break;
        }
        if (rc != YMO_OK)
            break;
        PyObject *req = build_request(st, p, self->buf + start, self->body, self->body_len,
                                      self->body_pos - start);
        if (req == NULL || PyList_Append(out, req) < 0) {
            Py_XDECREF(req);
            rc = -1;
            break;
        }
        Py_DECREF(req);
        start = self->body_pos;
        self->in_body = 0;
        ymo_http_parser_init(p, &self->limits, self->headers);
    }

    /* Drop what the returned requests used; spans are relative, so this is safe. */
    if (start != 0) {
        memmove(self->buf, self->buf + start, self->len - start);
        self->len -= start;
        if (self->in_body)
            self->body_pos -= start;
    }
    if (rc != 0 && rc != -1)
        self->error = rc;
    return rc;
}

PyDoc_STRVAR(rp_feed_doc,
             "feed(data) -> list\n\n"
             "Append data (a bytes-like object) and return every request completed so far,\n"
             "as tuples (see yimmo.parsers.ParsedRequest). Raises ParseError on a malformed\n"
             "request; the error is sticky. When requests complete before the error in the\n"
             "same call, they are returned and the next call raises.");

static PyObject *rp_feed(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
                         Py_ssize_t nargs, PyObject *kwnames)
{
    YmoRequestParserObject *self = (YmoRequestParserObject *)op;
    ymo_py_state *st = PyType_GetModuleState(defining_class);
    Py_buffer view;
    PyObject *out = NULL;

    if (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "feed() takes exactly one positional argument");
        return NULL;
    }
    if (st == NULL)
        return NULL;
    if (self->error != 0)
        return ymo__py_raise_parse_error(st, self->error);
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    /* Copy first: the parser lowercases names in place and data may change. */
    if (view.len > 0) {
        if (reserve(&self->buf, &self->cap, self->len + (size_t)view.len) < 0) {
            PyBuffer_Release(&view);
            return NULL;
        }
        memcpy(self->buf + self->len, view.buf, (size_t)view.len);
        self->len += (size_t)view.len;
    }
    PyBuffer_Release(&view);

    out = PyList_New(0);
    if (out == NULL)
        return NULL;
    int rc = rp_run(self, st, out);
    if (rc == -1)
        goto error;
    if (rc != 0 && PyList_GET_SIZE(out) == 0) {
        ymo__py_raise_parse_error(st, rc);
        goto error;
    }
    return out;

error:
    Py_XDECREF(out);
    return NULL;
}

static PyObject *rp_get_pending(PyObject *op, void *closure)
{
    YmoRequestParserObject *self = (YmoRequestParserObject *)op;
    (void)closure;
    return PyLong_FromSize_t(self->len);
}

static PyMethodDef rp_methods[] = {
    {"feed", (PyCFunction)(void (*)(void))rp_feed, METH_METHOD | METH_FASTCALL | METH_KEYWORDS,
     rp_feed_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef rp_getset[] = {
    {"pending", rp_get_pending, NULL,
     "Bytes buffered that are not part of a returned request.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(rp_doc,
             "RequestParser(*, max_request_line=8192, max_field_size=8192,\n"
             "              max_header_bytes=65536, max_headers=100, max_body=104857600)\n\n"
             "An incremental HTTP/1.x request parser (RFC 9112) over fed bytes.");

static PyType_Slot rp_slots[] = {
    {Py_tp_new, rp_new},
    {Py_tp_dealloc, rp_dealloc},
    {Py_tp_methods, rp_methods},
    {Py_tp_getset, rp_getset},
    {Py_tp_doc, (void *)rp_doc},
    {0, NULL},
};

static PyType_Spec rp_spec = {
    .name = "yimmo.RequestParser",
    .basicsize = sizeof(YmoRequestParserObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = rp_slots,
};

/* ---- parse_http_request ----------------------------------------------- */

PyDoc_STRVAR(parse_http_request_doc,
             "parse_http_request(data) -> tuple\n\n"
             "Parse the first request in data (bytes-like) with default limits and return\n"
             "its tuple (see yimmo.parsers.ParsedRequest). Raises ParseError, with code\n"
             "YMO_AGAIN when data holds no complete request.");

/* One whole request (head and body) parsed with the default limits. */
typedef struct {
    ymo_http_limits_t lim;
    ymo_http_parser_t p;
    ymo_http_header_t *headers;
    char *buf;                  /* a private copy of data: names are lowercased in place */
    char *body;                 /* decoded */
    size_t body_len, body_cap;
    size_t consumed;
} one_request_t;

static void one_request_free(one_request_t *r)
{
    PyMem_Free(r->headers);
    PyMem_Free(r->buf);
    PyMem_Free(r->body);
}

/* Parse the first request in data (bytes-like) into r: 0, or -1 with
 * ParseError (YMO_AGAIN when data holds no complete request) or another
 * exception set. Either way one_request_free(r) releases it. */
static int parse_one(ymo_py_state *st, PyObject *data, one_request_t *r)
{
    Py_buffer view;
    int rc, result = -1;

    memset(r, 0, sizeof(*r));
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return -1;
    ymo_http_limits_default(&r->lim);
    r->headers = PyMem_Calloc(r->lim.max_headers, sizeof(*r->headers));
    r->buf = PyMem_Malloc(view.len ? (size_t)view.len : 1);
    if (r->headers == NULL || r->buf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memcpy(r->buf, view.buf, (size_t)view.len);
    size_t len = (size_t)view.len;

    ymo_http_parser_init(&r->p, &r->lim, r->headers);
    rc = ymo_http_parse_head(&r->p, r->buf, len);
    if (rc != YMO_OK) {
        ymo__py_raise_parse_error(st, rc);
        goto done;
    }
    size_t pos = r->p.head_len;
    for (;;) {
        size_t used, doff, dlen;
        rc = ymo_http_parse_body(&r->p, r->buf + pos, len - pos, &used, &doff, &dlen);
        if (dlen != 0) {
            if (reserve(&r->body, &r->body_cap, r->body_len + dlen) < 0)
                goto done;
            memcpy(r->body + r->body_len, r->buf + pos + doff, dlen);
            r->body_len += dlen;
        }
        pos += used;
        if (rc == YMO_AGAIN && pos < len)
            continue;
        break;
    }
    if (rc != YMO_OK) {
        ymo__py_raise_parse_error(st, rc);
        goto done;
    }
    r->consumed = pos;
    result = 0;
done:
    PyBuffer_Release(&view);
    return result;
}

static PyObject *parse_http_request(PyObject *module, PyObject *arg)
{
    ymo_py_state *st = ymo__py_state(module);
    one_request_t r;
    PyObject *result = NULL;

    if (parse_one(st, arg, &r) == 0)
        result = build_request(st, &r.p, r.buf, r.body, r.body_len, r.consumed);
    one_request_free(&r);
    return result;
}

/* ---- build_wsgi_environ ------------------------------------------------ */

PyDoc_STRVAR(build_wsgi_environ_doc,
             "build_wsgi_environ(data, *, script_name='', url_scheme='http',\n"
             "                   remote=('127.0.0.1', 12345),\n"
             "                   server=('localhost', '8000')) -> dict\n\n"
             "Parse the first request in data as parse_http_request does and return the\n"
             "environ WSGIServer would give the application for it (the same C code).\n"
             "wsgi.input is an io.BytesIO of the decoded body. remote is the client's\n"
             "(address, port); server the (SERVER_NAME, SERVER_PORT) used when the request\n"
             "has no Host. Raises ParseError as parse_http_request does.");

/* A (str, str|int) pair: the str as latin-1 bytes (new reference), the port. */
static int address_arg(PyObject *pair, const char *what, int port_is_int, PyObject **host,
                       PyObject **port)
{
    *host = NULL;
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2
        || !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))
        || !(port_is_int ? PyLong_Check(PyTuple_GET_ITEM(pair, 1))
                         : PyUnicode_Check(PyTuple_GET_ITEM(pair, 1)))) {
        PyErr_Format(PyExc_TypeError, "%s must be a (str, %s) tuple", what,
                     port_is_int ? "int" : "str");
        return -1;
    }
    *port = PyTuple_GET_ITEM(pair, 1);  /* borrowed */
    if (port_is_int) {
        long v = PyLong_AsLong(*port);
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (v < 0 || v > 65535) {
            PyErr_Format(PyExc_ValueError, "%s port must be between 0 and 65535", what);
            return -1;
        }
    }
    *host = PyUnicode_AsLatin1String(PyTuple_GET_ITEM(pair, 0));
    return *host == NULL ? -1 : 0;
}

static PyObject *build_wsgi_environ(PyObject *module, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data", "script_name", "url_scheme", "remote", "server", "proxied",
                             NULL};
    ymo_py_state *st = ymo__py_state(module);
    PyObject *data, *script_name = st->str_empty, *url_scheme = NULL, *remote = NULL,
             *server = NULL;
    PyObject *rhost = NULL, *rport, *shost = NULL, *sport, *io = NULL, *input = NULL,
             *wsgi = NULL, *file_wrapper = NULL, *env = NULL;
    one_request_t r;
    ymo_py_environ_src_t src = {.script_name = NULL};
    int parsed = 0, proxied = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$UUOOp:build_wsgi_environ", kwlist, &data,
                                     &script_name, &url_scheme, &remote, &server, &proxied))
        return NULL;
    /* The defaults, new references (the given ones are borrowed). */
    url_scheme = url_scheme ? Py_NewRef(url_scheme) : PyUnicode_FromString("http");
    remote = remote ? Py_NewRef(remote) : Py_BuildValue("(si)", "127.0.0.1", 12345);
    server = server ? Py_NewRef(server) : Py_BuildValue("(ss)", "localhost", "8000");
    if (url_scheme == NULL || remote == NULL || server == NULL)
        goto done;
    if (address_arg(remote, "remote", 1, &rhost, &rport) < 0
        || address_arg(server, "server", 0, &shost, &sport) < 0)
        goto done;
    /* shost only checks that SERVER_NAME is latin-1; the str itself goes in. */
    parsed = 1;
    if (parse_one(st, data, &r) < 0)
        goto done;
    if ((io = PyImport_ImportModule("io")) == NULL
        || (input = PyObject_CallMethod(io, "BytesIO", "y#", r.body, (Py_ssize_t)r.body_len))
               == NULL
        || (wsgi = PyImport_ImportModule("yimmo.wsgi")) == NULL
        || (file_wrapper = PyObject_GetAttrString(wsgi, "FileWrapper")) == NULL)
        goto done;
    /* A request parsed from bytes has no local socket: SERVER_* come from
     * Host, the absolute target or server. */
    src.script_name = script_name;
    src.url_scheme = url_scheme;
    src.file_wrapper = file_wrapper;
    src.server_name = PyTuple_GET_ITEM(server, 0);
    src.server_port = sport;
    src.remote = PyBytes_AS_STRING(rhost);
    src.remote_len = (size_t)PyBytes_GET_SIZE(rhost);
    src.remote_port = (int)PyLong_AsLong(rport);   /* checked by address_arg */
    src.proxied = proxied;
    env = ymo__py_wsgi_environ(st, &r.p, r.buf, &src, input);
done:
    if (parsed)
        one_request_free(&r);
    Py_XDECREF(url_scheme);
    Py_XDECREF(remote);
    Py_XDECREF(server);
    Py_XDECREF(rhost);
    Py_XDECREF(shost);
    Py_XDECREF(io);
    Py_XDECREF(input);
    Py_XDECREF(wsgi);
    Py_XDECREF(file_wrapper);
    return env;
}

static PyMethodDef parser_functions[] = {
    {"parse_http_request", parse_http_request, METH_O, parse_http_request_doc},
    {"build_wsgi_environ", (PyCFunction)(void (*)(void))build_wsgi_environ,
     METH_VARARGS | METH_KEYWORDS, build_wsgi_environ_doc},
    {NULL, NULL, 0, NULL},
};

int ymo__py_parsers_init(PyObject *module, ymo_py_state *st)
{
    st->request_parser_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &rp_spec, NULL);
    if (st->request_parser_type == NULL)
        return -1;
    if (PyModule_AddType(module, st->request_parser_type) < 0)
        return -1;
    if (PyModule_AddFunctions(module, parser_functions) < 0)
        return -1;
    return 0;
}
