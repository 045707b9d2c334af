/*
 * TLS with OpenSSL as a connection transport: contexts loaded from a
 * configuration (certificate chains, client verification, versions, ALPN,
 * SNI), and a transport whose read drives the handshake and whose writev
 * gathers small buffers into one record.
 *
 * OpenSSL works on the socket itself (through a BIO that sends with
 * MSG_NOSIGNAL): a record costs one read or write system call, as on a
 * plain connection. Either direction may need
 * the other (a read that must write a handshake message when the socket is
 * full; a write that must first read), which the transport reports through
 * the connection's WANTS flags and the engine's watchers honour.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "core/core_internal.h"
#include "yimmo/tls.h"

/* Plaintext gathered into one SSL_write: a full record. */
#define GATHER_MAX 16384

struct ymo_tls_s {
    int refs;
    SSL_CTX *ctx;           /* the default certificate */
    SSL_CTX **sni;          /* picked by server name */
    size_t nsni;
    unsigned char *alpn;    /* wire format */
    size_t alpn_len;
};

enum { T_PEEK, T_HANDSHAKE, T_OPEN };

typedef struct {
    SSL *ssl;
    ymo_tls_t *tls;
    int state;
    int failed;             /* a fatal error: no close_notify may follow */
} tls_conn_t;

#define TLS_CONN(c) ((tls_conn_t *)(c)->transport_data)

/* --- Configuration ------------------------------------------------------ */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* OpenSSL's reason for a failure, for a one-line message: the first
 * error queued is the specific one ("no start line", "bad decrypt"); the
 * later ones say where it surfaced ("PEM lib"). */
static const char *ssl_reason(void)
{
    unsigned long e = ERR_peek_error();
    const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;
    return r != NULL ? r : "unknown OpenSSL error";
}

/* A file that cannot be opened is named with errno's reason rather than
 * OpenSSL's "system lib". */
static int check_file(const char *what, const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        set_err(err, errlen, "%s '%s': %s", what, path, strerror(e));
        return -e;
    }
    close(fd);
    return 0;
}

/* Never prompt on a terminal for a passphrase: the configured one or none. */
static int password_cb(char *buf, int size, int rwflag, void *userdata)
{
    const char *pw = userdata;
    if (pw == NULL)
        return 0;
    size_t n = strlen(pw);
    if (n > (size_t)size)
        n = (size_t)size;
    memcpy(buf, pw, n);
    return (int)n;
}

/* RFC 7301 3.2: no protocol in common is a fatal no_application_protocol
 * alert; a client that offers none is served without ALPN. */
static int alpn_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    ymo_tls_t *t = arg;
    unsigned char *o;
    if (SSL_select_next_proto(&o, outlen, t->alpn, (unsigned)t->alpn_len, in, inlen)
        != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = o;
    return SSL_TLSEXT_ERR_OK;
}

/* SNI (RFC 6066 3): the first extra certificate whose names match (RFC
 * 6125 rules, X509_check_host) serves; otherwise the default one. */
static int servername_cb(SSL *ssl, int *alert, void *arg)
{
    ymo_tls_t *t = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < t->nsni; i++) {
        X509 *x = SSL_CTX_get0_certificate(t->sni[i]);
        if (x != NULL && X509_check_host(x, name, 0, 0, NULL) == 1) {
            SSL_set_SSL_CTX(ssl, t->sni[i]);
            break;
        }
    }
    return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *new_ctx(ymo_tls_t *t, const ymo_tls_config_t *cfg, const ymo_tls_cert_t *cert,
                        char *err, size_t errlen, int *rc)
{
    const char *keyfile = cert->keyfile != NULL ? cert->keyfile : cert->certfile;
    *rc = YMO_E_TLS_CONFIG;
    if (cert->certfile == NULL) {
        set_err(err, errlen, "certfile is required");
        return NULL;
    }
    if ((*rc = check_file("certfile", cert->certfile, err, errlen)) < 0
        || (*rc = check_file("keyfile", keyfile, err, errlen)) < 0
        || (cfg->cafile != NULL && (*rc = check_file("ca_certs", cfg->cafile, err, errlen)) < 0))
        return NULL;
    *rc = YMO_E_TLS_CONFIG;

    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        set_err(err, errlen, "could not create a TLS context: %s", ssl_reason());
        return NULL;
    }
    /* Renegotiation is refused (a client-driven CPU sink; OpenSSL 3 refuses
     * client-initiated renegotiation by default, this says so whatever the
     * build's defaults); an EOF without close_notify is an EOF: HTTP framing
     * says where messages end. */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE
                                 | SSL_OP_NO_COMPRESSION | SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Partial writes and a moving buffer: the output queue is written as
     * far as the socket takes it, and a retry may present its bytes from
     * another address. Idle connections give their record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                              | SSL_MODE_RELEASE_BUFFERS);
    /* One TLS 1.3 session ticket per handshake rather than OpenSSL's two:
     * a client resumes with one, and each costs a session serialization. */
    SSL_CTX_set_num_tickets(ctx, 1);
    /* Read ahead: a record's header and body, and a whole flight of
     * records, come in one recv() rather than two per record. What is read
     * beyond the record being returned is announced by tls_pending(). */
    SSL_CTX_set_read_ahead(ctx, 1);
    int minv = cfg->min_version ? cfg->min_version : TLS1_2_VERSION;
    if (minv != TLS1_2_VERSION && minv != TLS1_3_VERSION) {
        set_err(err, errlen, "min_version must be TLS 1.2 or 1.3");
        goto error;
    }
    SSL_CTX_set_min_proto_version(ctx, minv);
    /* TLS 1.3 suites in Mozilla's recommended order: AES-128-GCM first.
     * Its SHA-256 key schedule runs on the CPU's SHA extensions where
     * SHA-384 does not, and its records take 10 AES rounds, not 14. */
    if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                      "TLS_CHACHA20_POLY1305_SHA256") != 1) {
        set_err(err, errlen, "could not set the TLS 1.3 cipher suites: %s", ssl_reason());
        goto error;
    }
    if (cfg->ciphers != NULL && SSL_CTX_set_cipher_list(ctx, cfg->ciphers) != 1) {
        set_err(err, errlen, "ciphers '%s': %s", cfg->ciphers, ssl_reason());
        goto error;
    }
    SSL_CTX_set_default_passwd_cb(ctx, password_cb);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, (void *)cert->password);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert->certfile) != 1) {
        set_err(err, errlen, "certfile '%s': not a PEM certificate chain (%s)", cert->certfile,
                ssl_reason());
        goto error;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, keyfile, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) == ERR_LIB_X509 && ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
            /* Read fine, but it is another certificate's key. */
            set_err(err, errlen, "keyfile '%s' does not match certfile '%s'", keyfile, cert->certfile);
            goto error;
        }
        set_err(err, errlen, "keyfile '%s': no usable PEM private key (%s; %s)", keyfile,
                ssl_reason(),
                cert->password != NULL ? "wrong password?" : "if it is encrypted, give its password");
        goto error;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        set_err(err, errlen, "keyfile '%s' does not match certfile '%s'", keyfile, cert->certfile);
        goto error;
    }
    /* The password is only needed while loading. */
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
    if (cfg->verify != YMO_TLS_VERIFY_NONE) {
        if (cfg->cafile == NULL) {
            set_err(err, errlen, "cert_reqs %s needs ca_certs",
                    cfg->verify == YMO_TLS_VERIFY_REQUIRED ? "required" : "optional");
            goto error;
        }
        if (SSL_CTX_load_verify_locations(ctx, cfg->cafile, NULL) != 1) {
            set_err(err, errlen, "ca_certs '%s': %s", cfg->cafile, ssl_reason());
            goto error;
        }
        STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->cafile);
        if (names != NULL)
            SSL_CTX_set_client_CA_list(ctx, names);
        int mode = SSL_VERIFY_PEER;
        if (cfg->verify == YMO_TLS_VERIFY_REQUIRED)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        SSL_CTX_set_verify(ctx, mode, NULL);
    } else if (cfg->cafile != NULL
               && SSL_CTX_load_verify_locations(ctx, cfg->cafile, NULL) != 1) {
        set_err(err, errlen, "ca_certs '%s': %s", cfg->cafile, ssl_reason());
        goto error;
    }
    /* A certfile without its issuers would have OpenSSL build the chain
     * from the verify store on every handshake (a certificate verification
     * each time). Build it here, once, the same way, and send what it
     * found from then on. */
    STACK_OF(X509) *chain = NULL;
    SSL_CTX_get0_chain_certs(ctx, &chain);
    if (sk_X509_num(chain) <= 0) {
        SSL_CTX_build_cert_chain(ctx, SSL_BUILD_CHAIN_FLAG_IGNORE_ERROR
                                          | SSL_BUILD_CHAIN_FLAG_CLEAR_ERROR);
        SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN);
    }
    /* Sessions resumed from this server's cache or tickets only. */
    static const unsigned char sid[] = "yimmo";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);
    if (t->alpn != NULL)
        SSL_CTX_set_alpn_select_cb(ctx, alpn_cb, t);
    SSL_CTX_set_tlsext_servername_callback(ctx, servername_cb);
    SSL_CTX_set_tlsext_servername_arg(ctx, t);
    ERR_clear_error();
    return ctx;
error:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

int ymo_tls_new(const ymo_tls_config_t *cfg, ymo_tls_t **out, char *err, size_t errlen)
{
    int rc = YMO_E_NOMEM;
    *out = NULL;
    ymo_tls_t *t = calloc(1, sizeof(*t));
    if (t == NULL)
        goto nomem;
    t->refs = 1;
    if (cfg->alpn != NULL && cfg->alpn_len > 0) {
        /* Wire format: each protocol is a length byte and 1..255 bytes. */
        for (size_t i = 0; i < cfg->alpn_len; i += 1 + cfg->alpn[i]) {
            if (cfg->alpn[i] == 0 || i + 1 + cfg->alpn[i] > cfg->alpn_len) {
                set_err(err, errlen, "alpn: each protocol must be 1 to 255 bytes");
                rc = YMO_E_TLS_CONFIG;
                goto error;
            }
        }
        if ((t->alpn = malloc(cfg->alpn_len)) == NULL)
            goto nomem;
        memcpy(t->alpn, cfg->alpn, cfg->alpn_len);
        t->alpn_len = cfg->alpn_len;
    }
    if ((t->ctx = new_ctx(t, cfg, &cfg->cert, err, errlen, &rc)) == NULL)
        goto error;
    if (cfg->nsni > 0) {
        if ((t->sni = calloc(cfg->nsni, sizeof(*t->sni))) == NULL)
            goto nomem;
        for (size_t i = 0; i < cfg->nsni; i++) {
            if ((t->sni[i] = new_ctx(t, cfg, &cfg->sni[i], err, errlen, &rc)) == NULL)
                goto error;
            t->nsni++;
        }
    }
    *out = t;
    return 0;
nomem:
    set_err(err, errlen, "out of memory");
error:
    if (t != NULL)
        ymo_tls_unref(t);
    return rc;
}

void ymo_tls_ref(ymo_tls_t *t)
{
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
}

void ymo_tls_unref(ymo_tls_t *t)
{
    if (t == NULL || __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    SSL_CTX_free(t->ctx);
    for (size_t i = 0; i < t->nsni; i++)
        SSL_CTX_free(t->sni[i]);
    free(t->sni);
    free(t->alpn);
    free(t);
}

void ymo_server_set_tls(ymo_server_t *s, ymo_tls_t *t)
{
    if (t != NULL)
        ymo_tls_ref(t);
    pthread_mutex_lock(&s->tls_lock);
    ymo_tls_t *old = s->tls;
    s->tls = t;
    pthread_mutex_unlock(&s->tls_lock);
    ymo_tls_unref(old);
}

/* --- A socket BIO without SIGPIPE ---------------------------------------- */

/* OpenSSL's socket BIO writes with write(): a peer's reset would raise
 * SIGPIPE in a process that does not ignore it. This one sends with
 * MSG_NOSIGNAL, as the plain transport does. */
static BIO_METHOD *sock_method;
static pthread_once_t sock_method_once = PTHREAD_ONCE_INIT;

static int sock_write(BIO *b, const char *buf, int len)
{
    int fd = (int)(intptr_t)BIO_get_data(b);
    ssize_t n;
    do
        n = send(fd, buf, (size_t)len, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    BIO_clear_retry_flags(b);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        BIO_set_retry_write(b);
    return (int)n;
}

static int sock_read(BIO *b, char *buf, int len)
{
    int fd = (int)(intptr_t)BIO_get_data(b);
    ssize_t n;
    do
        n = recv(fd, buf, (size_t)len, 0);
    while (n < 0 && errno == EINTR);
    BIO_clear_retry_flags(b);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        BIO_set_retry_read(b);
    return (int)n;
}

static long sock_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int sock_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void sock_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "yimmo socket");
    if (m == NULL)
        return;
    BIO_meth_set_write(m, sock_write);
    BIO_meth_set_read(m, sock_read);
    BIO_meth_set_ctrl(m, sock_ctrl);
    BIO_meth_set_create(m, sock_create);
    sock_method = m;
}

static BIO *sock_bio(int fd)
{
    pthread_once(&sock_method_once, sock_method_init);
    if (sock_method == NULL)
        return NULL;
    BIO *b = BIO_new(sock_method);
    if (b != NULL)
        BIO_set_data(b, (void *)(intptr_t)fd);
    return b;
}

/* --- The transport ------------------------------------------------------ */

/* Map a failed SSL_* call to the transport's return codes. reading says
 * which direction asked, so the other one can be waited for. */
static ssize_t ssl_failed(ymo_conn_t *c, tls_conn_t *tc, int ret, int reading)
{
    int e = SSL_get_error(tc->ssl, ret);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        if (!reading)
            c->flags |= YMO_CONN_WRITE_WANTS_READ;
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        if (reading)
            c->flags |= YMO_CONN_READ_WANTS_WRITE;
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;   /* close_notify */
    case SSL_ERROR_SYSCALL: {
        int err = errno;
        ERR_clear_error();
        tc->failed = 1;
        if (ret == 0 || err == 0)
            return reading ? 0 : -EPIPE;
        return -err;
    }
    default:
        tc->failed = 1;
        ymo__log(c->server, YMO_LOG_DEBUG, "TLS %s failed: %s",
                 tc->state == T_OPEN ? (reading ? "read" : "write") : "handshake", ssl_reason());
        ERR_clear_error();
        return YMO_E_TLS;
    }
}

/* Plain HTTP on a TLS port: a client with a wrong URL. It gets a readable
 * answer in clear text rather than a dropped connection. */
static void plaintext_reply(ymo_conn_t *c)
{
    static const char reply[] =
        "HTTP/1.1 400 Bad Request\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Length: 62\r\n"
        "Connection: close\r\n"
        "\r\n"
        "This port speaks HTTPS: send the request to an https:// URL.\r\n";
    /* Take what was sent first, so that closing does not reset the
     * connection before the client reads the answer. */
    char scratch[8192];
    while (recv(c->fd, scratch, sizeof(scratch), MSG_DONTWAIT) > 0)
        ;
    ssize_t n;
    do
        n = send(c->fd, reply, sizeof(reply) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    shutdown(c->fd, SHUT_WR);
    ymo__log(c->server, YMO_LOG_DEBUG, "plain HTTP on a TLS port: answered 400");
}

/* Before the handshake: the first byte tells a TLS handshake record (RFC
 * 8446 5.1: content type 22) from an HTTP request or garbage. */
static ssize_t peek(ymo_conn_t *c, tls_conn_t *tc)
{
    unsigned char b;
    ssize_t n;
    do
        n = recv(c->fd, &b, 1, MSG_PEEK);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    if (n == 0)
        return 0;
    if (b == 0x16) {
        tc->state = T_HANDSHAKE;
        return 1;
    }
    if (b >= 'A' && b <= 'Z') {
        plaintext_reply(c);
        return YMO_E_TLS_PLAINTEXT;
    }
    ymo__log(c->server, YMO_LOG_DEBUG, "not TLS on a TLS port (first byte 0x%02x)", b);
    return YMO_E_TLS;
}

static ssize_t tls_read(ymo_conn_t *c, char *buf, size_t len)
{
    tls_conn_t *tc = TLS_CONN(c);
    if (tc == NULL)
        return -EBADF;
    ERR_clear_error();
    if (tc->state != T_OPEN) {
        if (tc->state == T_PEEK) {
            ssize_t r = peek(c, tc);
            if (r <= 0)
                return r;
        }
        int r = SSL_do_handshake(tc->ssl);
        if (r != 1)
            return ssl_failed(c, tc, r, 1);
        tc->state = T_OPEN;
    }
    int n = SSL_read(tc->ssl, buf, len > INT_MAX ? INT_MAX : (int)len);
    if (n > 0)
        return n;
    return ssl_failed(c, tc, n, 1);
}

/* OpenSSL has no writev: small buffers are gathered so that a response
 * head and a small body leave in one record. A retry after EAGAIN gathers
 * the same queue again, starting with the same bytes and at least as many,
 * which is what SSL_write asks of a retry. */
static ssize_t tls_writev(ymo_conn_t *c, const struct iovec *iov, int iovcnt)
{
    static _Thread_local char gather[GATHER_MAX];
    tls_conn_t *tc = TLS_CONN(c);
    if (tc == NULL || tc->state != T_OPEN)
        return -EPIPE;
    const void *p = iov[0].iov_base;
    size_t len = iov[0].iov_len;
    if (iovcnt > 1 && len < GATHER_MAX) {
        len = 0;
        for (int i = 0; i < iovcnt && len < GATHER_MAX; i++) {
            size_t n = iov[i].iov_len;
            if (n > GATHER_MAX - len)
                n = GATHER_MAX - len;
            memcpy(gather + len, iov[i].iov_base, n);
            len += n;
        }
        p = gather;
    }
    if (len > INT_MAX)
        len = INT_MAX;
    ERR_clear_error();
    int n = SSL_write(tc->ssl, p, (int)len);
    if (n > 0)
        return n;
    return ssl_failed(c, tc, n, 0);
}

/* close_notify (RFC 8446 6.1), once. Best effort: a peer that does not
 * read is not waited for. */
static void close_notify(tls_conn_t *tc)
{
    if (tc->state != T_OPEN || tc->failed || (SSL_get_shutdown(tc->ssl) & SSL_SENT_SHUTDOWN))
        return;
    ERR_clear_error();
    SSL_shutdown(tc->ssl);
    ERR_clear_error();
}

static void tls_shutdown(ymo_conn_t *c)
{
    tls_conn_t *tc = TLS_CONN(c);
    if (tc != NULL)
        close_notify(tc);
    shutdown(c->fd, SHUT_WR);
}

static size_t tls_pending(ymo_conn_t *c)
{
    tls_conn_t *tc = TLS_CONN(c);
    return tc != NULL && tc->state == T_OPEN ? (size_t)SSL_has_pending(tc->ssl) : 0;
}

static void tls_free(ymo_conn_t *c)
{
    tls_conn_t *tc = TLS_CONN(c);
    if (tc == NULL)
        return;
    /* Every close that is no failure ends the session properly, also an
     * idle connection timed out or closed by stop(). */
    close_notify(tc);
    SSL_free(tc->ssl);
    ymo_tls_unref(tc->tls);
    free(tc);
    c->transport_data = NULL;
}

static const ymo_transport_t tls_transport = {
    .read = tls_read,
    .writev = tls_writev,
    .shutdown = tls_shutdown,
    .sendfile = NULL,   /* files are read and encrypted in user space */
    .pending = tls_pending,
    .free = tls_free,
};

int ymo_tls_attach(ymo_conn_t *c, ymo_tls_t *t)
{
    tls_conn_t *tc = malloc(sizeof(*tc));
    if (tc == NULL)
        return YMO_E_NOMEM;
    tc->ssl = SSL_new(t->ctx);
    BIO *bio = tc->ssl != NULL ? sock_bio(c->fd) : NULL;
    if (bio == NULL) {
        ERR_clear_error();
        SSL_free(tc->ssl);
        free(tc);
        return YMO_E_NOMEM;
    }
    SSL_set_bio(tc->ssl, bio, bio);     /* the SSL owns the BIO */
    SSL_set_accept_state(tc->ssl);
    tc->tls = t;
    ymo_tls_ref(t);
    tc->state = T_PEEK;
    tc->failed = 0;
    c->transport = &tls_transport;
    c->transport_data = tc;
    return 0;
}

/* --- What was negotiated ------------------------------------------------ */

int ymo_tls_active(const ymo_conn_t *c)
{
    return c->transport == &tls_transport;
}

int ymo_tls_info(ymo_conn_t *c, ymo_tls_info_t *info)
{
    memset(info, 0, sizeof(*info));
    if (c->transport != &tls_transport || TLS_CONN(c) == NULL || TLS_CONN(c)->state != T_OPEN)
        return 0;
    SSL *ssl = TLS_CONN(c)->ssl;
    info->version = SSL_get_version(ssl);
    info->cipher = SSL_CIPHER_get_name(SSL_get_current_cipher(ssl));
    SSL_get0_alpn_selected(ssl, &info->alpn, &info->alpn_len);
    info->server_name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    info->peer_verified = SSL_get0_peer_certificate(ssl) != NULL
                          && SSL_get_verify_result(ssl) == X509_V_OK;
    return 1;
}

void *ymo_tls_peer_cert(ymo_conn_t *c)
{
    if (c->transport != &tls_transport || TLS_CONN(c) == NULL || TLS_CONN(c)->state != T_OPEN)
        return NULL;
    return SSL_get0_peer_certificate(TLS_CONN(c)->ssl);
}
