/*
 * TLS from Python: the tls={...} dict turned into a ymo_tls_t, what a TLS
 * connection negotiated as exchange.tls and as WSGI environ entries, and
 * yimmo.check_tls().
 */
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "py/py_internal.h"
#include "yimmo/tls.h"

/* The strings a configuration points into stay alive here until the
 * configuration is loaded. */
typedef struct {
    PyObject *keep[64];
    int nkeep;
    ymo_tls_cert_t sni[16];
    unsigned char alpn[256];
} tls_args_t;

static void args_free(tls_args_t *a)
{
    for (int i = 0; i < a->nkeep; i++)
        Py_DECREF(a->keep[i]);
    a->nkeep = 0;
}

/* A path (str or os.PathLike) or password (str or bytes) as a C string
 * that lives as long as a; NULL stays NULL. */
static int get_str(tls_args_t *a, PyObject *o, const char *what, int path, const char **out)
{
    *out = NULL;
    if (o == NULL || o == Py_None)
        return 0;
    PyObject *b = NULL;
    if (path) {
        if (!PyUnicode_FSConverter(o, &b)) {
            PyErr_Format(PyExc_TypeError, "tls: %s must be a path, not %.100s", what,
                         Py_TYPE(o)->tp_name);
            return -1;
        }
    } else if (PyBytes_Check(o)) {
        b = Py_NewRef(o);
    } else if (PyUnicode_Check(o)) {
        b = PyUnicode_AsUTF8String(o);
        if (b == NULL)
            return -1;
    } else {
        PyErr_Format(PyExc_TypeError, "tls: %s must be a str, not %.100s", what,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    if (a->nkeep == (int)(sizeof(a->keep) / sizeof(a->keep[0]))) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_ValueError, "tls: too many settings");
        return -1;
    }
    a->keep[a->nkeep++] = b;
    if (strlen(PyBytes_AS_STRING(b)) != (size_t)PyBytes_GET_SIZE(b)) {
        PyErr_Format(PyExc_ValueError, "tls: %s contains a NUL byte", what);
        return -1;
    }
    *out = PyBytes_AS_STRING(b);
    return 0;
}

static int check_keys(PyObject *d, const char *const *allowed, const char *what)
{
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(d, &pos, &k, &v)) {
        int ok = 0;
        if (PyUnicode_Check(k)) {
            for (const char *const *p = allowed; *p != NULL && !ok; p++)
                ok = PyUnicode_CompareWithASCIIString(k, *p) == 0;
        }
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%s: unknown setting %R", what, k);
            return -1;
        }
    }
    return 0;
}

static int get_cert(tls_args_t *a, PyObject *o, ymo_tls_cert_t *cert)
{
    static const char *const keys[] = {"certfile", "keyfile", "password", NULL};
    if (PyDict_Check(o)) {
        if (check_keys(o, keys, "tls sni") < 0)
            return -1;
        PyObject *cf = PyDict_GetItemString(o, "certfile");     /* borrowed */
        if (cf == NULL) {
            PyErr_SetString(PyExc_ValueError, "tls: each sni entry needs a certfile");
            return -1;
        }
        return get_str(a, cf, "sni certfile", 1, &cert->certfile) < 0
                       || get_str(a, PyDict_GetItemString(o, "keyfile"), "sni keyfile", 1,
                                  &cert->keyfile) < 0
                       || get_str(a, PyDict_GetItemString(o, "password"), "sni password", 0,
                                  &cert->password) < 0
                   ? -1
                   : 0;
    }
    if (PyTuple_Check(o) && PyTuple_GET_SIZE(o) >= 1 && PyTuple_GET_SIZE(o) <= 3) {
        Py_ssize_t n = PyTuple_GET_SIZE(o);
        return get_str(a, PyTuple_GET_ITEM(o, 0), "sni certfile", 1, &cert->certfile) < 0
                       || (n > 1 && get_str(a, PyTuple_GET_ITEM(o, 1), "sni keyfile", 1,
                                            &cert->keyfile) < 0)
                       || (n > 2 && get_str(a, PyTuple_GET_ITEM(o, 2), "sni password", 0,
                                            &cert->password) < 0)
                   ? -1
                   : 0;
    }
    PyErr_Format(PyExc_TypeError,
                 "tls: sni entries are dicts {'certfile', 'keyfile', 'password'} or "
                 "(certfile, keyfile) tuples, not %.100s", Py_TYPE(o)->tp_name);
    return -1;
}

static int get_verify(PyObject *o, int *out)
{
    static const char *const names[] = {"none", "optional", "required"};
    *out = YMO_TLS_VERIFY_NONE;
    if (o == NULL || o == Py_None)
        return 0;
    if (PyLong_Check(o)) {
        long v = PyLong_AsLong(o);
        if (v >= 0 && v <= 2) {
            *out = (int)v;  /* ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED */
            return 0;
        }
    } else if (PyUnicode_Check(o)) {
        for (int i = 0; i < 3; i++) {
            if (PyUnicode_CompareWithASCIIString(o, names[i]) == 0) {
                *out = i;
                return 0;
            }
        }
    }
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_ValueError,
                     "tls: cert_reqs must be 'none', 'optional' or 'required', not %R", o);
    return -1;
}

static int get_min_version(PyObject *o, int *out)
{
    *out = TLS1_2_VERSION;
    if (o == NULL || o == Py_None)
        return 0;
    if (PyUnicode_Check(o)) {
        if (PyUnicode_CompareWithASCIIString(o, "1.2") == 0)
            return 0;
        if (PyUnicode_CompareWithASCIIString(o, "1.3") == 0) {
            *out = TLS1_3_VERSION;
            return 0;
        }
    } else if (PyLong_Check(o)) {
        /* ssl.TLSVersion values are the protocol's version numbers. */
        long v = PyLong_AsLong(o);
        if (v == TLS1_2_VERSION || v == TLS1_3_VERSION) {
            *out = (int)v;
            return 0;
        }
    }
    if (!PyErr_Occurred())
        PyErr_Format(PyExc_ValueError,
                     "tls: min_version must be '1.2' or '1.3' (TLS 1.0 and 1.1 are never "
                     "accepted), not %R", o);
    return -1;
}

static int get_alpn(tls_args_t *a, PyObject *o, ymo_tls_config_t *cfg)
{
    if (o == NULL) {
        static const unsigned char http11[] = "\x08http/1.1";
        memcpy(a->alpn, http11, sizeof(http11) - 1);
        cfg->alpn = a->alpn;
        cfg->alpn_len = sizeof(http11) - 1;
        return 0;
    }
    if (o == Py_None)
        return 0;
    PyObject *seq = PySequence_Fast(o, "tls: alpn must be a list of str");
    if (seq == NULL)
        return -1;
    size_t len = 0;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        PyObject *p = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t n;
        const char *s = PyUnicode_Check(p) ? PyUnicode_AsUTF8AndSize(p, &n) : NULL;
        if (s == NULL || n < 1 || n > 255 || len + 1 + (size_t)n > sizeof(a->alpn)) {
            Py_DECREF(seq);
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError,
                             "tls: alpn protocols are str of 1 to 255 bytes, not %R", p);
            return -1;
        }
        a->alpn[len++] = (unsigned char)n;
        memcpy(a->alpn + len, s, (size_t)n);
        len += (size_t)n;
    }
    Py_DECREF(seq);
    cfg->alpn = len > 0 ? a->alpn : NULL;
    cfg->alpn_len = len;
    return 0;
}

int ymo__py_tls_load(PyObject *o, ymo_tls_t **out)
{
    static const char *const keys[] = {
        "certfile", "keyfile", "password", "ca_certs", "cert_reqs", "ciphers",
        "min_version", "alpn", "sni", NULL,
    };
    *out = NULL;
    if (!PyDict_Check(o)) {
        PyErr_Format(PyExc_TypeError, "tls must be a dict of settings, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    if (check_keys(o, keys, "tls") < 0)
        return -1;
    tls_args_t a;
    a.nkeep = 0;
    ymo_tls_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    PyObject *cf = PyDict_GetItemString(o, "certfile");     /* borrowed, like the rest */
    if (cf == NULL || cf == Py_None) {
        PyErr_SetString(PyExc_ValueError, "tls: certfile is required");
        return -1;
    }
    if (get_str(&a, cf, "certfile", 1, &cfg.cert.certfile) < 0
        || get_str(&a, PyDict_GetItemString(o, "keyfile"), "keyfile", 1, &cfg.cert.keyfile) < 0
        || get_str(&a, PyDict_GetItemString(o, "password"), "password", 0, &cfg.cert.password) < 0
        || get_str(&a, PyDict_GetItemString(o, "ca_certs"), "ca_certs", 1, &cfg.cafile) < 0
        || get_str(&a, PyDict_GetItemString(o, "ciphers"), "ciphers", 0, &cfg.ciphers) < 0
        || get_verify(PyDict_GetItemString(o, "cert_reqs"), &cfg.verify) < 0
        || get_min_version(PyDict_GetItemString(o, "min_version"), &cfg.min_version) < 0
        || get_alpn(&a, PyDict_GetItemString(o, "alpn"), &cfg) < 0)
        goto error;
    PyObject *sni = PyDict_GetItemString(o, "sni");
    if (sni != NULL && sni != Py_None) {
        PyObject *seq = PySequence_Fast(sni, "tls: sni must be a list");
        if (seq == NULL)
            goto error;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        if (n > (Py_ssize_t)(sizeof(a.sni) / sizeof(a.sni[0]))) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "tls: at most %d sni certificates",
                         (int)(sizeof(a.sni) / sizeof(a.sni[0])));
            goto error;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            memset(&a.sni[i], 0, sizeof(a.sni[i]));
            if (get_cert(&a, PySequence_Fast_GET_ITEM(seq, i), &a.sni[i]) < 0) {
                Py_DECREF(seq);
                goto error;
            }
        }
        Py_DECREF(seq);
        cfg.sni = a.sni;
        cfg.nsni = (size_t)n;
    }

    char err[512];
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = ymo_tls_new(&cfg, out, err, sizeof(err));
    Py_END_ALLOW_THREADS
    if (r < 0) {
        if (r == YMO_E_NOMEM) {
            PyErr_NoMemory();
        } else if (r > YMO__ERRNO_MAX) {
            PyObject *e = PyObject_CallFunction(PyExc_OSError, "is", -r, err);
            if (e != NULL) {
                PyErr_SetObject((PyObject *)Py_TYPE(e), e);
                Py_DECREF(e);
            }
        } else {
            PyErr_SetString(PyExc_ValueError, err);
        }
        goto error;
    }
    args_free(&a);
    return 0;
error:
    args_free(&a);
    return -1;
}

/* yimmo.check_tls(tls): load the settings as a server would. */
static PyObject *check_tls(PyObject *module, PyObject *o)
{
    ymo_tls_t *t;
    if (ymo__py_tls_load(o, &t) < 0)
        return NULL;
    ymo_tls_unref(t);
    Py_RETURN_NONE;
}

/* --- What a connection negotiated ---------------------------------------- */

/* An X509 name in RFC 2253's one-line form. New reference, or None. */
static PyObject *name_str(X509_NAME *name)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL)
        return PyErr_NoMemory();
    PyObject *r;
    if (X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253) < 0) {
        r = Py_NewRef(Py_None);
    } else {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        r = PyUnicode_DecodeUTF8(p, n, "replace");
    }
    BIO_free(b);
    return r;
}

static PyObject *cert_pem(X509 *x)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL)
        return PyErr_NoMemory();
    PyObject *r = NULL;
    if (PEM_write_bio_X509(b, x) == 1) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        r = PyUnicode_DecodeASCII(p, n, NULL);
    } else {
        PyErr_SetString(PyExc_ValueError, "could not encode the client certificate");
    }
    BIO_free(b);
    return r;
}

static PyObject *cert_der(X509 *x)
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    if (n < 0)
        return PyErr_NoMemory();
    PyObject *r = PyBytes_FromStringAndSize((const char *)der, n);
    OPENSSL_free(der);
    return r;
}

/* Put key: value (a new reference, stolen) into d. */
static int put(PyObject *d, const char *key, PyObject *value)
{
    if (value == NULL)
        return -1;
    int r = PyDict_SetItemString(d, key, value);
    Py_DECREF(value);
    return r;
}

static PyObject *str_or_none(const char *s)
{
    return s != NULL ? PyUnicode_DecodeLatin1(s, (Py_ssize_t)strlen(s), NULL) : Py_NewRef(Py_None);
}

PyObject *ymo__py_tls_info(ymo_conn_t *c)
{
    ymo_tls_info_t info;
    if (c == NULL || !ymo_tls_info(c, &info))
        Py_RETURN_NONE;
    X509 *peer = ymo_tls_peer_cert(c);
    PyObject *d = PyDict_New();
    if (d == NULL)
        return NULL;
    if (put(d, "version", str_or_none(info.version)) < 0
        || put(d, "cipher", str_or_none(info.cipher)) < 0
        || put(d, "alpn", info.alpn_len > 0
                              ? PyUnicode_DecodeLatin1((const char *)info.alpn, info.alpn_len, NULL)
                              : Py_NewRef(Py_None)) < 0
        || put(d, "server_name", str_or_none(info.server_name)) < 0
        || put(d, "peer_cert", peer != NULL ? cert_der(peer) : Py_NewRef(Py_None)) < 0
        || put(d, "peer_subject",
               peer != NULL ? name_str(X509_get_subject_name(peer)) : Py_NewRef(Py_None)) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static const char *const tls_str_names[TS__COUNT] = {
    "HTTPS", "SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI", "SSL_CLIENT_VERIFY",
    "SSL_CLIENT_S_DN", "SSL_CLIENT_I_DN", "SSL_CLIENT_CERT",
    "https", "on", "NONE", "SUCCESS", "FAILED",
};

/* OpenSSL's version and cipher names are static strings: each one's str is
 * made once and found again by address. New reference. */
static PyObject *tls_name(ymo_py_state *st, const char *name)
{
    if (name == NULL)
        return Py_NewRef(Py_None);
    size_t n = sizeof(st->tls_names) / sizeof(st->tls_names[0]);
    for (size_t i = 0; i < n; i++) {
        if (st->tls_names[i].name == name)
            return Py_NewRef(st->tls_names[i].str);
        if (st->tls_names[i].name == NULL) {
            PyObject *str = PyUnicode_InternFromString(name);
            if (str == NULL)
                return NULL;
            st->tls_names[i].name = name;
            st->tls_names[i].str = Py_NewRef(str);
            return str;
        }
    }
    return str_or_none(name);
}

/* Put key: value (a new reference, stolen) into d; key is borrowed. */
static int put_key(PyObject *d, PyObject *key, PyObject *value)
{
    if (value == NULL)
        return -1;
    int r = PyDict_SetItem(d, key, value);
    Py_DECREF(value);
    return r;
}

int ymo__py_tls_environ(ymo_py_state *st, PyObject *env, ymo_conn_t *c)
{
    ymo_tls_info_t info;
    if (!ymo_tls_info(c, &info))
        return 0;
    PyObject *const *k = st->tls_strs;
    X509 *peer = ymo_tls_peer_cert(c);
    int verify = peer == NULL ? TS_NONE : info.peer_verified ? TS_SUCCESS : TS_FAILED;
    /* The names mod_ssl and its followers give these (RFC 3875 leaves
     * them to the server). */
    if (PyDict_SetItem(env, st->wsgi_keys[WK_WSGI_URL_SCHEME], k[TS_https]) < 0
        || PyDict_SetItem(env, k[TS_HTTPS], k[TS_on]) < 0
        || put_key(env, k[TS_SSL_PROTOCOL], tls_name(st, info.version)) < 0
        || put_key(env, k[TS_SSL_CIPHER], tls_name(st, info.cipher)) < 0
        || (info.server_name != NULL
            && put_key(env, k[TS_SSL_TLS_SNI], str_or_none(info.server_name)) < 0)
        || PyDict_SetItem(env, k[TS_SSL_CLIENT_VERIFY], k[verify]) < 0)
        return -1;
    if (peer != NULL
        && (put_key(env, k[TS_SSL_CLIENT_S_DN], name_str(X509_get_subject_name(peer))) < 0
            || put_key(env, k[TS_SSL_CLIENT_I_DN], name_str(X509_get_issuer_name(peer))) < 0
            || put_key(env, k[TS_SSL_CLIENT_CERT], cert_pem(peer)) < 0))
        return -1;
    return 1;
}

static PyMethodDef tls_functions[] = {
    {"check_tls", (PyCFunction)check_tls, METH_O,
     "check_tls(tls): load a tls={...} configuration as a server would; raise OSError "
     "(a file that cannot be read) or ValueError (anything else) with a one-line message."},
    {NULL, NULL, 0, NULL},
};

int ymo__py_tls_init(PyObject *module, ymo_py_state *st)
{
    for (int i = 0; i < TS__COUNT; i++) {
        st->tls_strs[i] = PyUnicode_InternFromString(tls_str_names[i]);
        if (st->tls_strs[i] == NULL)
            return -1;
    }
    return PyModule_AddFunctions(module, tls_functions);
}

void ymo__py_tls_clear(ymo_py_state *st)
{
    for (int i = 0; i < TS__COUNT; i++)
        Py_CLEAR(st->tls_strs[i]);
    for (size_t i = 0; i < sizeof(st->tls_names) / sizeof(st->tls_names[0]); i++) {
        st->tls_names[i].name = NULL;
        Py_CLEAR(st->tls_names[i].str);
    }
}
