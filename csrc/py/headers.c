/*
 * yimmo.Headers: a request's header fields in order, duplicates kept, looked
 * up case-insensitively. Names arrive lowercased from the parser.
 */
#include "py/py_internal.h"

typedef struct {
    PyObject_HEAD
    PyObject *pairs;    /* list of (name, value) str tuples */
} YmoHeadersObject;

PyObject *ymo__py_headers_new(ymo_py_state *st, PyObject *pairs)
{
    YmoHeadersObject *h = PyObject_GC_New(YmoHeadersObject, st->headers_type);
    if (h == NULL) {
        Py_DECREF(pairs);
        return NULL;
    }
    h->pairs = pairs;   /* stolen */
    PyObject_GC_Track(h);
    return (PyObject *)h;
}

/* The key, lowercased (ASCII only: field names are tokens). New reference. */
static PyObject *lower_key(PyObject *key)
{
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "header name must be str, not %.100s",
                     Py_TYPE(key)->tp_name);
        return NULL;
    }
    Py_ssize_t n = PyUnicode_GET_LENGTH(key);
    if (PyUnicode_IS_ASCII(key)) {
        const char *s = (const char *)PyUnicode_DATA(key);
        Py_ssize_t i;
        for (i = 0; i < n; i++)
            if (s[i] >= 'A' && s[i] <= 'Z')
                break;
        if (i == n)
            return Py_NewRef(key);
    }
    /* str.lower itself: a subclass's lower() may return anything. */
    return PyObject_CallMethod((PyObject *)&PyUnicode_Type, "lower", "O", key);
}

/* Index of the first pair at or after start whose name equals key. */
static Py_ssize_t find(YmoHeadersObject *h, PyObject *lkey, Py_ssize_t start)
{
    Py_ssize_t n = PyList_GET_SIZE(h->pairs);
    for (Py_ssize_t i = start; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(PyList_GET_ITEM(h->pairs, i), 0);
        if (name == lkey)
            return i;
        int eq = PyUnicode_Compare(name, lkey) == 0;
        if (eq)
            return i;
    }
    return -1;
}

static PyObject *headers_subscript(YmoHeadersObject *h, PyObject *key)
{
    PyObject *lkey = lower_key(key);
    if (lkey == NULL)
        return NULL;
    Py_ssize_t i = find(h, lkey, 0);
    Py_DECREF(lkey);
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return Py_NewRef(PyTuple_GET_ITEM(PyList_GET_ITEM(h->pairs, i), 1));
}

static Py_ssize_t headers_len(YmoHeadersObject *h)
{
    return PyList_GET_SIZE(h->pairs);
}

static int headers_contains(YmoHeadersObject *h, PyObject *key)
{
    if (!PyUnicode_Check(key))
        return 0;
    PyObject *lkey = lower_key(key);
    if (lkey == NULL)
        return -1;
    Py_ssize_t i = find(h, lkey, 0);
    Py_DECREF(lkey);
    return i >= 0;
}

static PyObject *headers_get(YmoHeadersObject *h, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "get() takes a name and an optional default");
        return NULL;
    }
    PyObject *lkey = lower_key(args[0]);
    if (lkey == NULL)
        return NULL;
    Py_ssize_t i = find(h, lkey, 0);
    Py_DECREF(lkey);
    if (i < 0)
        return Py_NewRef(nargs == 2 ? args[1] : Py_None);
    return Py_NewRef(PyTuple_GET_ITEM(PyList_GET_ITEM(h->pairs, i), 1));
}

static PyObject *headers_getall(YmoHeadersObject *h, PyObject *key)
{
    PyObject *lkey = lower_key(key);
    if (lkey == NULL)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        goto error;
    for (Py_ssize_t i = find(h, lkey, 0); i >= 0; i = find(h, lkey, i + 1)) {
        if (PyList_Append(out, PyTuple_GET_ITEM(PyList_GET_ITEM(h->pairs, i), 1)) < 0)
            goto error;
    }
    Py_DECREF(lkey);
    return out;
error:
    Py_DECREF(lkey);
    Py_XDECREF(out);
    return NULL;
}

static PyObject *column(YmoHeadersObject *h, int col)
{
    Py_ssize_t n = PyList_GET_SIZE(h->pairs);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PyList_GET_ITEM(h->pairs, i);
        PyList_SET_ITEM(out, i, Py_NewRef(col < 0 ? pair : PyTuple_GET_ITEM(pair, col)));
    }
    return out;
}

static PyObject *headers_items(YmoHeadersObject *h, PyObject *unused)
{
    return column(h, -1);
}

static PyObject *headers_keys(YmoHeadersObject *h, PyObject *unused)
{
    return column(h, 0);
}

static PyObject *headers_values(YmoHeadersObject *h, PyObject *unused)
{
    return column(h, 1);
}

static PyObject *headers_iter(YmoHeadersObject *h)
{
    PyObject *keys = column(h, 0);
    if (keys == NULL)
        return NULL;
    PyObject *it = PyObject_GetIter(keys);
    Py_DECREF(keys);
    return it;
}

static PyObject *headers_repr(YmoHeadersObject *h)
{
    return PyUnicode_FromFormat("Headers(%R)", h->pairs);
}

static int headers_traverse(YmoHeadersObject *h, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(h));
    Py_VISIT(h->pairs);
    return 0;
}

static int headers_clear(YmoHeadersObject *h)
{
    Py_CLEAR(h->pairs);
    return 0;
}

static void headers_dealloc(YmoHeadersObject *h)
{
    PyTypeObject *tp = Py_TYPE(h);
    PyObject_GC_UnTrack(h);
    headers_clear(h);
    tp->tp_free(h);
    Py_DECREF(tp);
}

static PyMethodDef headers_methods[] = {
    {"get", (PyCFunction)(void (*)(void))headers_get, METH_FASTCALL,
     "get(name, default=None): the first value of name, or default."},
    {"getall", (PyCFunction)headers_getall, METH_O,
     "getall(name): every value of name, in order (an empty list if none)."},
    {"items", (PyCFunction)headers_items, METH_NOARGS, "items(): (name, value) pairs in order."},
    {"keys", (PyCFunction)headers_keys, METH_NOARGS, "keys(): names in order, repeated for duplicates."},
    {"values", (PyCFunction)headers_values, METH_NOARGS, "values(): values in order."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot headers_slots[] = {
    {Py_tp_doc, "A request's header fields: ordered, duplicates kept, case-insensitive lookup."},
    {Py_tp_dealloc, headers_dealloc},
    {Py_tp_traverse, headers_traverse},
    {Py_tp_clear, headers_clear},
    {Py_tp_repr, headers_repr},
    {Py_tp_iter, headers_iter},
    {Py_tp_methods, headers_methods},
    {Py_mp_subscript, headers_subscript},
    {Py_mp_length, headers_len},
    {Py_sq_length, headers_len},
    {Py_sq_contains, headers_contains},
    {0, NULL},
};

static PyType_Spec headers_spec = {
    .name = "yimmo.Headers",
    .basicsize = sizeof(YmoHeadersObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE
             | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = headers_slots,
};

int ymo__py_headers_init(PyObject *module, ymo_py_state *st)
{
    st->headers_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &headers_spec, NULL);
    if (st->headers_type == NULL)
        return -1;
    return PyModule_AddType(module, st->headers_type);
}
