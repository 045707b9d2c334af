/*
 * yimmo.WebSocket and yimmo.WSMessage: WebSockets on yimmo.Server, driven
 * by callbacks on the loop thread (on_connect, on_open, on_message,
 * on_close of a handler object registered per path), and
 * yimmo.parsers.parse_ws_frames for tests and fuzzers.
 */
#include "py/py_internal.h"

#include "yimmo/ws.h"

typedef struct {
    PyObject_HEAD
    ymo_conn_t *conn;           /* NULL once closed */
    YmoServerObject *server;    /* borrowed: valid while conn is set */
    PyObject *handler;          /* the path's handler object */
    PyObject *path, *query, *headers, *remote_addr, *subprotocol, *subprotocols;
    int closing;                /* close() was called, the close was reported, or
                                   the handshake refused */
} YmoWebSocketObject;

typedef struct {
    PyObject_HEAD
    uint8_t *data;              /* malloc'd, owned */
    Py_ssize_t len;
    int opcode;
    PyObject *text;             /* cached str */
} YmoWSMessageObject;

int ymo__py_inflate_init(PyObject *module);

/* --- WSMessage ------------------------------------------------------------ */

static PyObject *msg_new(ymo_py_state *st, int opcode, uint8_t *data, size_t len)
{
    YmoWSMessageObject *m = PyObject_New(YmoWSMessageObject, st->wsmessage_type);
    if (m == NULL) {
        free(data);
        return NULL;
    }
    m->data = data;     /* owned from here */
    m->len = (Py_ssize_t)len;
    m->opcode = opcode;
    m->text = NULL;
    return (PyObject *)m;
}

static void msg_dealloc(YmoWSMessageObject *m)
{
    PyTypeObject *tp = Py_TYPE(m);
    free(m->data);
    Py_XDECREF(m->text);
    tp->tp_free(m);
    Py_DECREF(tp);
}

static int msg_getbuffer(YmoWSMessageObject *m, Py_buffer *view, int flags)
{
    /* Read-only and alive as long as the view holds the message. */
    return PyBuffer_FillInfo(view, (PyObject *)m, m->data, m->len, 1, flags);
}

static PyObject *msg_text(YmoWSMessageObject *m, void *c)
{
    if (m->text == NULL)
        m->text = PyUnicode_DecodeUTF8((const char *)m->data, m->len, "strict");
    return Py_XNewRef(m->text);
}

static PyObject *msg_data(YmoWSMessageObject *m, void *c)
{
    return PyBytes_FromStringAndSize((const char *)m->data, m->len);
}

static PyObject *msg_is_text(YmoWSMessageObject *m, void *c)
{
    return PyBool_FromLong(m->opcode == YMO_WS_TEXT);
}

static PyObject *msg_is_binary(YmoWSMessageObject *m, void *c)
{
    return PyBool_FromLong(m->opcode == YMO_WS_BINARY);
}

static Py_ssize_t msg_len(YmoWSMessageObject *m)
{
    return m->len;
}

static PyObject *msg_bytes(YmoWSMessageObject *m, PyObject *unused)
{
    return msg_data(m, NULL);
}

static PyObject *msg_repr(YmoWSMessageObject *m)
{
    return PyUnicode_FromFormat("<yimmo.WSMessage %s, %zd bytes>",
                                m->opcode == YMO_WS_TEXT ? "text" : "binary", m->len);
}

static PyGetSetDef msg_getset[] = {
    {"text", (getter)msg_text, NULL, "The payload decoded as str (UTF-8).", NULL},
    {"data", (getter)msg_data, NULL, "The payload as bytes (a copy; memoryview(msg) is none).", NULL},
    {"is_text", (getter)msg_is_text, NULL, "A text message.", NULL},
    {"is_binary", (getter)msg_is_binary, NULL, "A binary message.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef msg_methods[] = {
    {"__bytes__", (PyCFunction)msg_bytes, METH_NOARGS, "The payload as bytes."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot msg_slots[] = {
    {Py_tp_doc, "A received WebSocket message; supports the buffer protocol (zero copy)."},
    {Py_tp_dealloc, msg_dealloc},
    {Py_tp_repr, msg_repr},
    {Py_tp_getset, msg_getset},
    {Py_tp_methods, msg_methods},
    {Py_sq_length, msg_len},
    {Py_bf_getbuffer, msg_getbuffer},
    {0, NULL},
};

static PyType_Spec msg_spec = {
    .name = "yimmo.WSMessage",
    .basicsize = sizeof(YmoWSMessageObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = msg_slots,
};

/* --- WebSocket ------------------------------------------------------------ */

/* The connection is the loop thread's: another thread touching it would
 * race the loop, which runs without the GIL. Once closed, there is neither
 * (the server may be gone). */
static int ws_on_loop(YmoWebSocketObject *ws)
{
    YmoServerObject *srv = ws->server;
    if (ws->conn == NULL)
        return 0;
    if (srv->phase == 1 && !pthread_equal(pthread_self(), srv->loop_thread)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "a WebSocket is used on the server's loop thread only: in its "
                        "callbacks and handlers, not from other threads");
        return -1;
    }
    return 0;
}

/* In on_connect the handshake is still being decided: no connection yet,
 * and none refused or closed. */
static int ws_decided(YmoWebSocketObject *ws)
{
    if (ws->conn == NULL && !ws->closing) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the WebSocket is not open yet: on_connect refuses by returning False "
                        "or a status (400-599); send from on_open");
        return -1;
    }
    return 0;
}

static int ws_live(YmoWebSocketObject *ws)
{
    if (ws_on_loop(ws) < 0 || ws_decided(ws) < 0)
        return -1;
    if (ws->conn == NULL || ws->closing || (ws->conn->flags & YMO_CONN_CLOSED)) {
        PyErr_SetString(PyExc_ConnectionError, "the WebSocket is closed");
        return -1;
    }
    return 0;
}

/* What send() was given, as bytes to frame: a received WSMessage as it
 * came (its type, no copy), str as text (UTF-8), bytes and other buffers as
 * binary. *owner is a new reference that keeps the bytes alive. */
static int payload_of(ymo_py_state *st, PyObject *data, PyObject **owner, const char **p,
                      Py_ssize_t *n, int *opcode)
{
    if (Py_IS_TYPE(data, st->wsmessage_type)) {
        YmoWSMessageObject *m = (YmoWSMessageObject *)data;
        *owner = Py_NewRef(data);
        *opcode = m->opcode;
        *p = (const char *)m->data;
        *n = m->len;
        return 0;
    }
    if (PyUnicode_Check(data)) {
        *owner = PyUnicode_AsUTF8String(data);
        *opcode = YMO_WS_TEXT;
    } else if (PyBytes_Check(data)) {
        *owner = Py_NewRef(data);
        *opcode = YMO_WS_BINARY;
    } else if (PyObject_CheckBuffer(data)) {
        *owner = PyBytes_FromObject(data);
        *opcode = YMO_WS_BINARY;
    } else {
        PyErr_Format(PyExc_TypeError, "data must be str or bytes, not %.100s",
                     Py_TYPE(data)->tp_name);
        return -1;
    }
    if (*owner == NULL)
        return -1;
    *p = PyBytes_AS_STRING(*owner);
    *n = PyBytes_GET_SIZE(*owner);
    return 0;
}

/* close(code=1000, reason='') arguments, checked (RFC 6455 7.4). */
static int close_args(PyObject *args, PyObject *kw, int *code, const char **reason, Py_ssize_t *rlen)
{
    static char *kwlist[] = {"code", "reason", NULL};
    PyObject *code_o = NULL, *reason_o = NULL;
    *code = YMO_WS_NORMAL;
    *reason = "";
    *rlen = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O!U:close", kwlist, &PyLong_Type, &code_o,
                                     &reason_o))
        return -1;
    if (code_o != NULL) {
        int overflow;
        long c = PyLong_AsLongAndOverflow(code_o, &overflow);
        *code = overflow || c < 0 || c > 65535 ? 0 : (int)c;
    }
    /* RFC 6455 5.5.1: the reason is UTF-8 (a str, so never invalid). */
    if (reason_o != NULL && (*reason = PyUnicode_AsUTF8AndSize(reason_o, rlen)) == NULL)
        return -1;
    int c = *code;
    if (!((c >= 1000 && c <= 1003) || (c >= 1007 && c <= 1014) || (c >= 3000 && c <= 4999))) {
        PyErr_Format(PyExc_ValueError, "close code %R is not one an endpoint may send",
                     code_o != NULL ? code_o : Py_None);
        return -1;
    }
    if (*rlen > 123) {
        PyErr_SetString(PyExc_ValueError, "the close reason is at most 123 bytes in UTF-8");
        return -1;
    }
    return 0;
}

/* None, or the exception for what ymo_ws_send / ymo_ws_sync_send said. */
static PyObject *send_result(int r)
{
    if (r == 0)
        Py_RETURN_NONE;
    if (r == YMO_E_NOMEM)
        PyErr_SetString(PyExc_BufferError,
                        "the client is not reading: the send queue is over its limit");
    else if (r == YMO_E_STATE)
        PyErr_SetString(PyExc_RuntimeError, "the WebSocket is not open");
    else
        PyErr_Format(PyExc_ConnectionError, "the WebSocket is closing (%s)", ymo_strerror(r));
    return NULL;
}

static PyObject *ws_send(YmoWebSocketObject *ws, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data", "fin", NULL};
    PyObject *data;
    int fin = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$p:send", kwlist, &data, &fin))
        return NULL;
    if (ws_live(ws) < 0)
        return NULL;
    PyObject *owner;
    int opcode;
    const char *ptr;
    Py_ssize_t plen;
    if (payload_of(ws->server->st, data, &owner, &ptr, &plen, &opcode) < 0)
        return NULL;
    /* A message sent with fin=False goes on: the session makes the rest
     * continuation frames. */
    return send_result(ymo_ws_send(ws->conn, opcode, ptr, (size_t)plen, fin, owner));
}

/* ping(payload=b'') arguments: bytes, at most 125 of them (RFC 6455 5.5). */
static int ping_args(PyObject *args, PyObject *kw, const char **p, Py_ssize_t *n)
{
    static char *kwlist[] = {"payload", NULL};
    PyObject *payload = NULL;
    *p = "";
    *n = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O!:ping", kwlist, &PyBytes_Type, &payload))
        return -1;
    if (payload != NULL) {
        *p = PyBytes_AS_STRING(payload);
        *n = PyBytes_GET_SIZE(payload);
    }
    if (*n > 125) {
        PyErr_SetString(PyExc_ValueError, "ping payload is at most 125 bytes (RFC 6455 5.5)");
        return -1;
    }
    return 0;
}

static PyObject *ws_ping(YmoWebSocketObject *ws, PyObject *args, PyObject *kw)
{
    const char *p;
    Py_ssize_t n;
    if (ping_args(args, kw, &p, &n) < 0 || ws_live(ws) < 0)
        return NULL;
    return send_result(ymo_ws_ping(ws->conn, p, (size_t)n));
}

static PyObject *ws_close(YmoWebSocketObject *ws, PyObject *args, PyObject *kw)
{
    int code;
    const char *reason;
    Py_ssize_t rlen;
    if (close_args(args, kw, &code, &reason, &rlen) < 0 || ws_on_loop(ws) < 0
        || ws_decided(ws) < 0)
        return NULL;
    if (ws->conn != NULL && !ws->closing && !(ws->conn->flags & YMO_CONN_CLOSED))
        ymo_ws_close(ws->conn, code, reason, (size_t)rlen);
    ws->closing = 1;
    Py_RETURN_NONE;
}

#define WS_ATTR(name)                                           \
    static PyObject *ws_get_##name(YmoWebSocketObject *ws, void *c) \
    {                                                           \
        return Py_NewRef(ws->name ? ws->name : Py_None);        \
    }
WS_ATTR(path)
WS_ATTR(query)
WS_ATTR(headers)
WS_ATTR(remote_addr)
WS_ATTR(subprotocol)
WS_ATTR(subprotocols)

static PyObject *ws_get_closed(YmoWebSocketObject *ws, void *c)
{
    return PyBool_FromLong(ws->conn == NULL || ws->closing || (ws->conn->flags & YMO_CONN_CLOSED));
}

static int ws_traverse(YmoWebSocketObject *ws, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(ws));
    Py_VISIT(ws->handler);
    Py_VISIT(ws->headers);
    return 0;
}

static int ws_clear(YmoWebSocketObject *ws)
{
    Py_CLEAR(ws->handler);
    Py_CLEAR(ws->path);
    Py_CLEAR(ws->query);
    Py_CLEAR(ws->headers);
    Py_CLEAR(ws->remote_addr);
    Py_CLEAR(ws->subprotocol);
    Py_CLEAR(ws->subprotocols);
    return 0;
}

static void ws_dealloc(YmoWebSocketObject *ws)
{
    PyTypeObject *tp = Py_TYPE(ws);
    PyObject_GC_UnTrack(ws);
    ws_clear(ws);
    tp->tp_free(ws);
    Py_DECREF(tp);
}

static PyMethodDef ws_methods[] = {
    {"send", (PyCFunction)(void (*)(void))ws_send, METH_VARARGS | METH_KEYWORDS,
     "send(data, *, fin=True): send str (text) or bytes (binary), or a received WSMessage\n"
     "as it came (no copy); fin=False sends a fragment and later calls continue the message.\n"
     "BufferError when the client does not read."},
    {"ping", (PyCFunction)(void (*)(void))ws_ping, METH_VARARGS | METH_KEYWORDS,
     "ping(payload=b''): send a ping."},
    {"close", (PyCFunction)(void (*)(void))ws_close, METH_VARARGS | METH_KEYWORDS,
     "close(code=1000, reason=''): start the closing handshake."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef ws_getset[] = {
    {"path", (getter)ws_get_path, NULL, "The request path.", NULL},
    {"query", (getter)ws_get_query, NULL, "The query string.", NULL},
    {"headers", (getter)ws_get_headers, NULL, "The handshake request's yimmo.Headers.", NULL},
    {"remote_addr", (getter)ws_get_remote_addr, NULL, "The client's (host, port).", NULL},
    {"subprotocol", (getter)ws_get_subprotocol, NULL, "The subprotocol chosen, or None.", NULL},
    {"subprotocols", (getter)ws_get_subprotocols, NULL, "The subprotocols the client offered.", NULL},
    {"closed", (getter)ws_get_closed, NULL, "True once the connection is closing or closed.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot ws_slots[] = {
    {Py_tp_doc, "A WebSocket connection on yimmo.Server."},
    {Py_tp_dealloc, ws_dealloc},
    {Py_tp_traverse, ws_traverse},
    {Py_tp_clear, ws_clear},
    {Py_tp_methods, ws_methods},
    {Py_tp_getset, ws_getset},
    {0, NULL},
};

static PyType_Spec ws_spec = {
    .name = "yimmo.WebSocket",
    .basicsize = sizeof(YmoWebSocketObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = ws_slots,
};

/* --- The hooks -------------------------------------------------------------- */

/* Call handler.name(*args) if the handler has it. 0, or -1 (logged). */
static int call_optional(YmoServerObject *srv, YmoWebSocketObject *ws, const char *name,
                         PyObject *const *args, size_t n, PyObject **result)
{
    PyObject *meth = PyObject_GetAttrString(ws->handler, name);
    if (result != NULL)
        *result = NULL;
    if (meth == NULL) {
        /* Not defined: nothing to call. Any other error is the handler's. */
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            ymo__py_app_failed(srv, NULL, name);
            return -1;
        }
        PyErr_Clear();
        return 0;
    }
    PyObject *r = PyObject_Vectorcall(meth, args, n, NULL);
    Py_DECREF(meth);
    if (r == NULL) {
        ymo__py_app_failed(srv, NULL, name);
        return -1;
    }
    if (result != NULL)
        *result = r;
    else
        Py_DECREF(r);
    return 0;
}

static void hook_ws_message(ymo_server_t *s, ymo_conn_t *c, int opcode, uint8_t *data, size_t len)
{
    YmoServerObject *srv = (YmoServerObject *)s->data;
    YmoWebSocketObject *ws = ymo_ws_user(c);
    PyObject *msg = msg_new(srv->st, opcode, data, len);
    if (msg == NULL) {
        PyErr_Clear();
        ymo_ws_close(c, YMO_WS_INTERNAL, "out of memory", 13);
        return;
    }
    PyObject *args[2] = {(PyObject *)ws, msg};
    if (call_optional(srv, ws, "on_message", args, 2, NULL) < 0 && ws->conn != NULL
        && !(c->flags & YMO_CONN_CLOSED))
        ymo_ws_close(c, YMO_WS_INTERNAL, "internal error", 14);
    Py_DECREF(msg);
}

static void hook_ws_open(ymo_server_t *s, ymo_conn_t *c)
{
    YmoServerObject *srv = (YmoServerObject *)s->data;
    PyObject *arg = (PyObject *)ymo_ws_user(c);
    call_optional(srv, (YmoWebSocketObject *)arg, "on_open", &arg, 1, NULL);
}

static void hook_ws_close(ymo_server_t *s, ymo_conn_t *c, int code, const char *reason, size_t len)
{
    YmoServerObject *srv = (YmoServerObject *)s->data;
    YmoWebSocketObject *ws = ymo_ws_user(c);
    ws->closing = 1;
    PyObject *pcode = PyLong_FromLong(code);
    PyObject *preason = PyUnicode_DecodeUTF8(reason, (Py_ssize_t)len, "replace");
    if (pcode != NULL && preason != NULL) {
        PyObject *args[3] = {(PyObject *)ws, pcode, preason};
        call_optional(srv, ws, "on_close", args, 3, NULL);
    } else {
        PyErr_Clear();
    }
    Py_XDECREF(pcode);
    Py_XDECREF(preason);
    ws->conn = NULL;
    Py_DECREF(ws);      /* the connection's reference, from the upgrade */
}

/* The subprotocols a client offers, as a tuple of str (what on_connect's
 * choice is checked against: the application cannot change it): every
 * Sec-WebSocket-Protocol line, in order (RFC 6455 11.3.4: several lines
 * mean the same as one joined with commas). */
static PyObject *offered(ymo_conn_t *c)
{
    const char *base;
    const ymo_http_parser_t *p = ymo_http_request(c, &base);
    PyObject *list = PyList_New(0);
    for (uint32_t k = 0; list != NULL && k < p->nheaders; k++) {
        const ymo_http_header_t *h = &p->headers[k];
        if (h->name.len != 22 || memcmp(base + h->name.off, "sec-websocket-protocol", 22) != 0)
            continue;
        size_t i = 0, n = h->value.len;
        const char *v = base + h->value.off;
        while (i < n) {
            while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
                i++;
            size_t start = i;
            while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
                i++;
            if (i > start) {
                PyObject *s = PyUnicode_DecodeLatin1(v + start, (Py_ssize_t)(i - start), NULL);
                if (s == NULL || PyList_Append(list, s) < 0)
                    Py_CLEAR(list);
                Py_XDECREF(s);
                if (list == NULL)
                    break;
            }
        }
    }
    PyObject *t = list ? PyList_AsTuple(list) : NULL;
    Py_XDECREF(list);
    return t;
}

static int check_subprotocol(PyObject *chosen, PyObject *offered_list)
{
    if (!PyUnicode_Check(chosen)) {
        PyErr_Format(PyExc_TypeError, "a subprotocol is a str, not %.100s",
                     Py_TYPE(chosen)->tp_name);
        return -1;
    }
    int in = PySequence_Contains(offered_list, chosen);
    if (in == 0)
        PyErr_Format(PyExc_ValueError, "subprotocol %R was not offered by the client (it offered %R)",
                     chosen, offered_list);
    return in == 1 ? 0 : -1;
}

static void refuse(ymo_conn_t *c, int status, const char *why)
{
    ymo_http_response_t *resp = ymo_http_response(c);
    char text[160];
    int len = snprintf(text, sizeof(text), "WebSocket handshake refused: %s\n", why);
    memset(resp, 0, sizeof(*resp));
    /* RFC 6455 4.4: a version we do not speak gets 426 naming ours (with
     * Upgrade, RFC 9110 15.5.22). The connection closes after it. */
    int failed = ymo_http_response_begin(c, status) < 0
                 || (status == 426
                     && (ymo_http_response_header(c, "Upgrade", 7, "websocket", 9) < 0
                         || ymo_http_response_header(c, "Sec-WebSocket-Version", 21, "13", 2) < 0))
                 || ymo_http_response_header(c, "Content-Type", 12, "text/plain", 10) < 0
                 || ymo_http_response_header(c, "Connection", 10, "close", 5) < 0
                 || ymo_http_response_end_head(c, (int64_t)len) < 0
                 || ymo_http_response_body(c, text, (size_t)len, NULL) < 0
                 || ymo_http_response_finish(c) < 0;
    (void)failed;   /* closed below either way */
    resp->flags |= YMO_RESP_CLOSE;
}

int ymo__py_ws_upgrade(YmoServerObject *srv, ymo_conn_t *c, PyObject *handler, PyObject *path,
                       PyObject *query, PyObject *headers, PyObject *remote_addr)
{
    ymo_ws_request_t req;
    int r = ymo_ws_check_request(c, &req);
    if (r == 1)
        return 0;       /* not an upgrade: the HTTP handler answers */
    if (r != 0) {
        refuse(c, r, req.refusal);
        return 1;
    }
    YmoWebSocketObject *ws = PyObject_GC_New(YmoWebSocketObject, srv->st->websocket_type);
    if (ws == NULL) {
        PyErr_Clear();
        ymo_http_respond_error(c, 503, "out of memory");
        return 1;
    }
    ws->conn = NULL;
    ws->server = srv;
    ws->handler = Py_NewRef(handler);
    ws->path = Py_XNewRef(path);
    ws->query = Py_XNewRef(query);
    ws->headers = Py_XNewRef(headers);
    ws->remote_addr = Py_XNewRef(remote_addr);
    ws->subprotocol = NULL;
    ws->subprotocols = offered(c);
    ws->closing = 0;
    PyObject_GC_Track(ws);
    if (ws->subprotocols == NULL) {
        PyErr_Clear();
        goto reject500;
    }

    /* on_connect(ws) decides: None accepts, a str accepts with that
     * subprotocol, an int refuses with that status, False refuses (403). */
    PyObject *decision = NULL;
    PyObject *arg = (PyObject *)ws;
    if (call_optional(srv, ws, "on_connect", &arg, 1, &decision) < 0)
        goto reject500;
    int status = 0;
    if (decision != NULL && decision != Py_None) {
        if (PyBool_Check(decision)) {
            status = decision == Py_False ? 403 : 0;
        } else if (PyLong_Check(decision)) {
            int overflow;
            long st = PyLong_AsLongAndOverflow(decision, &overflow);
            if (overflow || st < 400 || st > 599) {
                PyErr_Format(PyExc_ValueError,
                             "on_connect returned %R: a refusal is a status in 400..599", decision);
                ymo__py_app_failed(srv, NULL, "on_connect");
                Py_DECREF(decision);
                goto reject500;
            }
            status = (int)st;
        } else if (check_subprotocol(decision, ws->subprotocols) == 0) {
            ws->subprotocol = Py_NewRef(decision);
        } else {
            /* The application's mistake: logged, and the client gets 500. */
            ymo__py_app_failed(srv, NULL, "on_connect");
            Py_DECREF(decision);
            goto reject500;
        }
    }
    Py_XDECREF(decision);
    if (status != 0) {
        ymo__py_simple_response(c, status, "WebSocket connection refused\n");
        ymo_http_response(c)->flags |= YMO_RESP_CLOSE;
        ws->closing = 1;
        Py_DECREF(ws);
        return 1;
    }

    Py_ssize_t splen = 0;
    const char *sp = ws->subprotocol ? PyUnicode_AsUTF8AndSize(ws->subprotocol, &splen) : NULL;
    ymo_ws_config_t cfg = srv->ws_config;
    /* The connection holds a reference until its close is reported. */
    r = ymo_ws_accept(c, &req, sp, (size_t)splen, &cfg, ws);
    if (r < 0) {
        ws->closing = 1;
        Py_DECREF(ws);
        if (!(ymo_http_response(c)->flags & YMO_RESP_STARTED))
            ymo_http_respond_error(c, 400, "WebSocket handshake failed");
        return 1;
    }
    ws->conn = c;
    /* on_open comes once the connection speaks WebSocket (hook_ws_open):
     * until this exchange ends, it still runs HTTP. */
    return 1;
reject500:
    ymo__py_simple_response(c, 500, "Internal Server Error\n");
    ymo_http_response(c)->flags |= YMO_RESP_CLOSE;
    ws->closing = 1;
    Py_DECREF(ws);
    return 1;
}

/* --- yimmo.parsers.parse_ws_frames ------------------------------------------- */

/* cuts: offsets at which the input arrives in pieces; each piece is parsed
 * to its end before the next is looked at, as the server's reads are. */
static int get_cuts(PyObject *o, size_t len, size_t **out, Py_ssize_t *n)
{
    *out = NULL;
    *n = 0;
    if (o == NULL)
        return 0;
    PyObject *seq = PySequence_Fast(o, "cuts must be a sequence of offsets");
    if (seq == NULL)
        return -1;
    *n = PySequence_Fast_GET_SIZE(seq);
    *out = PyMem_Malloc(sizeof(size_t) * (size_t)(*n > 0 ? *n : 1));
    if (*out == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        Py_ssize_t v = PyNumber_AsSsize_t(PySequence_Fast_GET_ITEM(seq, i), PyExc_OverflowError);
        if (v == -1 && PyErr_Occurred())
            goto error;
        if (v < 0 || (size_t)v > len || (i > 0 && (size_t)v < (*out)[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "cuts must be ascending offsets within the data");
            goto error;
        }
        (*out)[i] = (size_t)v;
    }
    Py_DECREF(seq);
    return 0;
error:
    Py_DECREF(seq);
    PyMem_Free(*out);
    *out = NULL;
    return -1;
}

static PyObject *parse_ws_frames(PyObject *module, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data", "max_message", "require_mask", "rsv_allowed", "cuts", NULL};
    Py_buffer buf;
    unsigned long long max = 16ull << 20;
    int require_mask = 1, rsv_allowed = 0;
    PyObject *cuts_o = NULL, *max_o = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|$OpiO:parse_ws_frames", kwlist, &buf, &max_o,
                                     &require_mask, &rsv_allowed, &cuts_o))
        return NULL;
    /* Checked, not wrapped by a "K" format: -1 would be "unlimited". */
    if (ymo__py_uint_arg(max_o, "max_message", 0, ULLONG_MAX, &max) < 0
        || (rsv_allowed & ~0x70) != 0) {
        if (!PyErr_Occurred())
            PyErr_Format(PyExc_ValueError, "rsv_allowed must be RSV bits (0x10, 0x20, 0x40 "
                                           "or a sum), not %d", rsv_allowed);
        PyBuffer_Release(&buf);
        return NULL;
    }
    ymo_py_state *st = ymo__py_state(module);
    /* As the server does: each payload is unmasked straight into its own
     * buffer, sized at the frame's header (never beyond the input left, so
     * a header announcing more than follows costs nothing); the input is
     * only read. */
    uint8_t *p = (uint8_t *)buf.buf;
    size_t len = (size_t)buf.len, pos = 0;
    size_t *cuts;
    Py_ssize_t ncuts, next_cut = 0;
    if (get_cuts(cuts_o, len, &cuts, &ncuts) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    size_t end = ncuts > 0 ? cuts[next_cut++] : len;
    ymo_ws_parser_t parser;
    ymo_ws_parser_init(&parser, max, require_mask);
    parser.rsv_allowed = (uint8_t)rsv_allowed;
    PyObject *frames = PyList_New(0);
    PyObject *payload = NULL;
    Py_ssize_t filled = 0;
    if (frames == NULL)
        goto error;
    for (;;) {
        size_t consumed, off, n;
        uint8_t *out = payload != NULL ? (uint8_t *)PyBytes_AS_STRING(payload) + filled : NULL;
        int ev = ymo_ws_parse_to(&parser, p + pos, end - pos, &consumed, &off, &n, out);
        if (ev == YMO_WS_EV_PAYLOAD)
            filled += (Py_ssize_t)n;
        pos += consumed;
        if (ev == YMO_WS_EV_NONE) {
            if (end == len)
                break;
            end = next_cut < ncuts ? cuts[next_cut++] : len;
            continue;
        }
        if (ev == YMO_WS_EV_ERROR) {
            PyObject *e = Py_BuildValue("(sisi)", parser.reason, parser.error, "websocket",
                                        parser.error);
            if (e != NULL) {
                PyErr_SetObject(st->parse_error, e);
                Py_DECREF(e);
            }
            goto error;
        }
        if (ev == YMO_WS_EV_HEADER) {
            size_t want = parser.frame.len < len - pos ? (size_t)parser.frame.len : len - pos;
            Py_XSETREF(payload, PyBytes_FromStringAndSize(NULL, (Py_ssize_t)want));
            filled = 0;
            if (payload == NULL)
                goto error;
        } else if (ev == YMO_WS_EV_FRAME_END) {
            /* A whole frame was in the input: its buffer is exactly full. */
            if (filled != PyBytes_GET_SIZE(payload) && _PyBytes_Resize(&payload, filled) < 0)
                goto error;
            PyObject *t = Py_BuildValue("(iiiO)", parser.frame.fin, parser.frame.rsv >> 4,
                                        parser.frame.opcode, payload);
            if (t == NULL || PyList_Append(frames, t) < 0) {
                Py_XDECREF(t);
                goto error;
            }
            Py_DECREF(t);
            Py_CLEAR(payload);
        }
    }
    Py_XDECREF(payload);
    PyMem_Free(cuts);
    PyBuffer_Release(&buf);
    PyObject *r = Py_BuildValue("(Nn)", frames, (Py_ssize_t)pos);
    return r;
error:
    Py_XDECREF(payload);
    Py_XDECREF(frames);
    PyMem_Free(cuts);
    PyBuffer_Release(&buf);
    return NULL;
}

static PyMethodDef ws_module_methods[] = {
    {"parse_ws_frames", (PyCFunction)(void (*)(void))parse_ws_frames, METH_VARARGS | METH_KEYWORDS,
     "parse_ws_frames(data, *, max_message=16 MiB, require_mask=True, rsv_allowed=0, cuts=())\n"
     "-> (frames, consumed): complete frames as (fin, rsv, opcode, payload) with payloads\n"
     "unmasked; raises ParseError(reason, close_code, 'websocket', close_code).\n"
     "cuts: ascending offsets where the data is fed in pieces, as reads deliver it;\n"
     "the result is the same as whole."},
    {NULL, NULL, 0, NULL},
};

int ymo__py_ws_init(PyObject *module, ymo_py_state *st)
{
    st->websocket_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &ws_spec, NULL);
    if (st->websocket_type == NULL || PyModule_AddType(module, st->websocket_type) < 0)
        return -1;
    st->wsmessage_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &msg_spec, NULL);
    if (st->wsmessage_type == NULL || PyModule_AddType(module, st->wsmessage_type) < 0)
        return -1;
    if (PyModule_AddFunctions(module, ws_module_methods) < 0)
        return -1;
    return ymo__py_inflate_init(module);
}

void ymo__py_ws_hooks(ymo_server_hooks_t *hooks)
{
    hooks->ws_open = hook_ws_open;
    hooks->ws_message = hook_ws_message;
    hooks->ws_close = hook_ws_close;
}

/* --- yimmo.WSGIWebSocket: the blocking API for WSGI applications ------------ */

/* environ["yimmo.websocket"] on an upgrade request. The application calls
 * accept() on a worker thread (the connection is then its own), and
 * receive()/send()/close() block that thread only. */
typedef struct {
    PyObject_HEAD
    ymo_conn_t *conn;           /* NULL once the request is over */
    YmoServerObject *server;    /* borrowed: valid while conn is set */
    ymo_ws_t *ws;               /* after accept() */
    int closed;
    PyObject *subprotocols;
    pthread_t thread;           /* the one that runs the application */
} YmoWSGIWebSocketObject;

static int sync_live(YmoWSGIWebSocketObject *w, int need_ws)
{
    if (w->conn == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the request that carried this WebSocket is over");
        return -1;
    }
    if (ymo__py_check_owner(w->thread, "a WSGI WebSocket", "the application") < 0)
        return -1;
    if (need_ws && w->ws == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "accept() the WebSocket first");
        return -1;
    }
    return 0;
}

static PyObject *sync_accept(YmoWSGIWebSocketObject *w, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"subprotocol", NULL};
    PyObject *chosen = Py_None;
    const char *sp = NULL;
    Py_ssize_t splen = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:accept", kwlist, &chosen))
        return NULL;
    if (sync_live(w, 0) < 0)
        return NULL;
    if (w->ws != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "accept() was called already");
        return NULL;
    }
    if (chosen != Py_None && (check_subprotocol(chosen, w->subprotocols) < 0
                              || (sp = PyUnicode_AsUTF8AndSize(chosen, &splen)) == NULL))
        return NULL;
    if (!(w->conn->flags & YMO_CONN_CHECKED_OUT)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "WebSockets from a WSGI application need worker threads "
                        "(WSGIServer(threads=N), yimmo-wsgi --threads N): on the loop thread a "
                        "blocking receive() would stop every other client");
        return NULL;
    }
    ymo_ws_request_t req;
    int r = ymo_ws_check_request(w->conn, &req);
    if (r != 0) {
        /* The application answers: with the status named here (426 wants
         * Sec-WebSocket-Version: 13 with it), or however its framework
         * answers an error. */
        PyErr_Format(PyExc_ValueError, "not a valid WebSocket handshake (HTTP %d: %s)",
                     r == 1 ? 400 : r, r == 1 ? "no Upgrade: websocket" : req.refusal);
        return NULL;
    }
    ymo_ws_config_t cfg = w->server->ws_config;
    Py_BEGIN_ALLOW_THREADS
    ymo__py_gil_held = 0;
    r = ymo_ws_sync_accept(w->conn, &req, sp, (size_t)splen, &cfg, &w->ws);
    ymo__py_gil_held = 1;
    Py_END_ALLOW_THREADS
    if (r < 0) {
        PyErr_Format(PyExc_ConnectionError, "the WebSocket handshake failed: %s", ymo_strerror(r));
        return NULL;
    }
    return Py_NewRef(w);
}

static PyObject *sync_receive(YmoWSGIWebSocketObject *w, PyObject *unused)
{
    if (sync_live(w, 1) < 0)
        return NULL;
    if (w->closed)
        Py_RETURN_NONE;
    int opcode = 0, r;
    uint8_t *data = NULL;
    size_t len = 0;
    YMO_BLOCKING(w->server, r = ymo_ws_sync_recv(w->conn, w->ws, &opcode, &data, &len));
    if (r == 1) {
        w->closed = 1;
        Py_RETURN_NONE;
    }
    if (r < 0) {
        w->closed = 1;
        PyErr_Format(PyExc_ConnectionError, "receive failed: %s", ymo_strerror(r));
        return NULL;
    }
    return msg_new(w->server->st, opcode, data, len);
}

static PyObject *sync_send(YmoWSGIWebSocketObject *w, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data", "fin", NULL};
    PyObject *data;
    int fin = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$p:send", kwlist, &data, &fin))
        return NULL;
    if (sync_live(w, 1) < 0)
        return NULL;
    PyObject *b;
    const char *ptr;
    Py_ssize_t plen;
    int opcode;
    if (payload_of(w->server->st, data, &b, &ptr, &plen, &opcode) < 0)
        return NULL;
    int r;
    YMO_BLOCKING(w->server, r = ymo_ws_sync_send(w->conn, w->ws, opcode, ptr, (size_t)plen, fin));
    Py_DECREF(b);
    return send_result(r);
}

static PyObject *sync_ping(YmoWSGIWebSocketObject *w, PyObject *args, PyObject *kw)
{
    const char *p;
    Py_ssize_t n;
    if (ping_args(args, kw, &p, &n) < 0 || sync_live(w, 1) < 0)
        return NULL;
    int r;
    YMO_BLOCKING(w->server, r = ymo_ws_sync_ping(w->conn, w->ws, p, (size_t)n));
    return send_result(r);
}

static PyObject *sync_close(YmoWSGIWebSocketObject *w, PyObject *args, PyObject *kw)
{
    int code;
    const char *reason;
    Py_ssize_t rlen;
    if (close_args(args, kw, &code, &reason, &rlen) < 0)
        return NULL;
    if (sync_live(w, 1) < 0)
        return NULL;
    if (!w->closed) {
        int r;
        YMO_BLOCKING(w->server, r = ymo_ws_sync_close(w->conn, w->ws, code, reason, (size_t)rlen));
        (void)r;
        w->closed = 1;
    }
    Py_RETURN_NONE;
}

static PyObject *sync_close_code(YmoWSGIWebSocketObject *w, void *c)
{
    if (w->ws == NULL || !w->closed)
        Py_RETURN_NONE;
    const char *reason;
    size_t len;
    return PyLong_FromLong(ymo_ws_sync_code(w->ws, &reason, &len));
}

static PyObject *sync_subprotocols(YmoWSGIWebSocketObject *w, void *c)
{
    return Py_NewRef(w->subprotocols ? w->subprotocols : Py_None);
}

static void sync_dealloc(YmoWSGIWebSocketObject *w)
{
    PyTypeObject *tp = Py_TYPE(w);
    ymo_ws_sync_free(w->ws);
    Py_XDECREF(w->subprotocols);
    tp->tp_free(w);
    Py_DECREF(tp);
}

static PyMethodDef sync_methods[] = {
    {"accept", (PyCFunction)(void (*)(void))sync_accept, METH_VARARGS | METH_KEYWORDS,
     "accept(subprotocol=None): answer the handshake (101); returns self."},
    {"receive", (PyCFunction)sync_receive, METH_NOARGS,
     "receive(): the next yimmo.WSMessage, or None once the connection closed."},
    {"send", (PyCFunction)(void (*)(void))sync_send, METH_VARARGS | METH_KEYWORDS,
     "send(data, *, fin=True): send str (text) or bytes (binary)."},
    {"ping", (PyCFunction)(void (*)(void))sync_ping, METH_VARARGS | METH_KEYWORDS,
     "ping(payload=b''): send a ping (the pong is taken by receive())."},
    {"close", (PyCFunction)(void (*)(void))sync_close, METH_VARARGS | METH_KEYWORDS,
     "close(code=1000, reason=''): the closing handshake."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sync_getset[] = {
    {"close_code", (getter)sync_close_code, NULL, "The close code once closed, else None.", NULL},
    {"subprotocols", (getter)sync_subprotocols, NULL, "The subprotocols the client offered.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot sync_slots[] = {
    {Py_tp_doc, "environ['yimmo.websocket']: a WebSocket a WSGI application drives with blocking calls."},
    {Py_tp_dealloc, sync_dealloc},
    {Py_tp_methods, sync_methods},
    {Py_tp_getset, sync_getset},
    {0, NULL},
};

static PyType_Spec sync_spec = {
    .name = "yimmo.WSGIWebSocket",
    .basicsize = sizeof(YmoWSGIWebSocketObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = sync_slots,
};

PyObject *ymo__py_wsgi_ws_new(YmoServerObject *srv, ymo_conn_t *c)
{
    YmoWSGIWebSocketObject *w = PyObject_New(YmoWSGIWebSocketObject, srv->st->wsgi_websocket_type);
    if (w == NULL)
        return NULL;
    w->conn = c;
    w->server = srv;
    w->ws = NULL;
    w->closed = 0;
    w->thread = pthread_self();
    ymo_ws_request_t req;
    w->subprotocols = ymo_ws_check_request(c, &req) == 0 ? offered(c) : PyTuple_New(0);
    if (w->subprotocols == NULL) {
        Py_DECREF(w);
        return NULL;
    }
    return (PyObject *)w;
}

void ymo__py_wsgi_ws_detach(PyObject *obj, int failed)
{
    YmoWSGIWebSocketObject *w = (YmoWSGIWebSocketObject *)obj;
    ymo_conn_t *c = w->conn;
    if (w->ws != NULL && !w->closed && c != NULL && !(c->flags & YMO_CONN_CLOSED)
        && (c->flags & YMO_CONN_CHECKED_OUT)) {
        /* RFC 6455 7.1.1, 7.4.1: a close frame, never a bare TCP close. */
        int code = failed ? YMO_WS_INTERNAL : YMO_WS_NORMAL;
        const char *reason = failed ? "internal error" : "";
        int r;
        YMO_BLOCKING(w->server, r = ymo_ws_sync_close(c, w->ws, code, reason, strlen(reason)));
        (void)r;
    }
    w->conn = NULL;
    w->closed = 1;
}

int ymo__py_wsgi_ws_init(PyObject *module, ymo_py_state *st)
{
    st->wsgi_websocket_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &sync_spec, NULL);
    if (st->wsgi_websocket_type == NULL)
        return -1;
    return PyModule_AddType(module, st->wsgi_websocket_type);
}

/* --- yimmo.parsers.inflate_ws_message: permessage-deflate on bytes alone --- */

static PyObject *inflate_ws_message(PyObject *module, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"data", "max_size", "no_context_takeover", NULL};
    Py_buffer buf;
    unsigned long long max = 16ull << 20;
    int no_takeover = 1;
    PyObject *max_o = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "y*|$Op:inflate_ws_message", kwlist, &buf, &max_o,
                                     &no_takeover))
        return NULL;
    if (ymo__py_uint_arg(max_o, "max_size", 0, ULLONG_MAX, &max) < 0) {
        PyBuffer_Release(&buf);
        return NULL;
    }
    ymo_ws_deflate_params_t params = {
        .client_no_context_takeover = (uint8_t)no_takeover,
        .server_no_context_takeover = (uint8_t)no_takeover,
        .server_max_window_bits = 15,
        .client_max_window_bits = 15,
    };
    ymo_ws_deflate_t *d = ymo_ws_deflate_new(&params);
    if (d == NULL) {
        PyBuffer_Release(&buf);
        return PyErr_NoMemory();
    }
    uint8_t *out = NULL;
    size_t outlen = 0;
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = ymo_ws_inflate(d, buf.buf, (size_t)buf.len, max, &out, &outlen);
    Py_END_ALLOW_THREADS
    ymo_ws_deflate_free(d);
    PyBuffer_Release(&buf);
    if (r != 0) {
        ymo_py_state *st = ymo__py_state(module);
        PyObject *e = Py_BuildValue("(sisi)", r == YMO_WS_TOO_BIG ? "message too big"
                                              : "invalid compressed data", r, "websocket", r);
        if (e != NULL) {
            PyErr_SetObject(st->parse_error, e);
            Py_DECREF(e);
        }
        return NULL;
    }
    PyObject *res = PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)outlen);
    free(out);
    return res;
}

static PyMethodDef inflate_methods[] = {
    {"inflate_ws_message", (PyCFunction)(void (*)(void))inflate_ws_message,
     METH_VARARGS | METH_KEYWORDS,
     "inflate_ws_message(data, *, max_size=16 MiB, no_context_takeover=True) -> bytes:\n"
     "inflate one permessage-deflate message payload (RFC 7692 7.2.2) with the server's\n"
     "size cap; raises ParseError(reason, 1009 or 1007, 'websocket', code)."},
    {NULL, NULL, 0, NULL},
};

int ymo__py_inflate_init(PyObject *module)
{
    return PyModule_AddFunctions(module, inflate_methods);
}
