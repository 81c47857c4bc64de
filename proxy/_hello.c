/* A TLS ClientHello gathered from its records and read for the front door's SNI and ALPN, in one
pass with no object per field (schoolgate.proxy.hello).

`client_hello(data)` is mitmproxy's `parse_client_hello(data)` as far as the front door reads it:
the handshake is gathered from the TLS records exactly as mitmproxy's `get_client_hello` gathers
it (handshake records only, none empty, until the length in the handshake's header is in; the
handshake type is not checked, as mitmproxy does not), then its body is read as mitmproxy's
generated parser reads it, with its quirks: the cipher suites are read as whole suites, a body
that ends after the compression methods has no extensions at all, the extensions' own length
is passed over (they are read to the body's end), and so is the server name list's and the ALPN
list's (read to their extension's end). Every extension of the two kinds is read, the later ones
too: a truncated one anywhere refuses the whole ClientHello, as in mitmproxy.

Returns None while the ClientHello is not all in; raises ValueError where mitmproxy would (a
record that is not a TLS handshake record, an empty record, a body cut short anywhere); else
(the handshake's body, the candidate server names, the ALPN protocols). A candidate is the name
of a server_name extension that holds exactly one entry, of type host_name; the first of them
that is a valid host is the SNI (checked in Python: mitmproxy's rules, cached). The ALPN
protocols are those of the first ALPN extension.

Every read is checked against the end of its buffer before it is made.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define RECORD_HEADER 5
#define HANDSHAKE_HEADER 4
#define CONTENT_HANDSHAKE 0x16
#define EXT_SERVER_NAME 0x0000
#define EXT_ALPN 0x0010
#define HOST_NAME 0 /* the only server name type (RFC 6066 section 3) */
#define VERSION_AND_RANDOM 34

static unsigned read16(const unsigned char *at) { return (unsigned)at[0] << 8 | at[1]; }

/* mitmproxy's starts_like_tls_record: a handshake record of SSL 3.0 to TLS 1.2's record version */
static int tls_record(const unsigned char *header) {
    return header[0] == CONTENT_HANDSHAKE && header[1] == 0x03 && header[2] <= 0x03;
}

/* Gathers the handshake from the records in `data`, as mitmproxy's get_client_hello does.
   Returns 1 and sets *body (a new reference: the handshake without its 4-byte header), 0 while
   it is not all in, -1 with an exception set. */
static int gather(const unsigned char *data, Py_ssize_t size, PyObject **body_out) {
    unsigned char header[HANDSHAKE_HEADER];
    Py_ssize_t offset = 0, gathered = 0, needed = 0;
    for (;;) {
        if (size - offset < RECORD_HEADER)
            return 0;
        const unsigned char *record = data + offset;
        if (!tls_record(record)) {
            PyObject *got = PyBytes_FromStringAndSize((const char *)record, RECORD_HEADER);
            if (got != NULL) {
                PyErr_Format(PyExc_ValueError, "Expected TLS record, got %R instead.", got);
                Py_DECREF(got);
            }
            return -1;
        }
        Py_ssize_t record_size = (Py_ssize_t)read16(record + 3);
        if (record_size == 0) {
            PyErr_SetString(PyExc_ValueError, "Record must not be empty.");
            return -1;
        }
        offset += RECORD_HEADER;
        if (size - offset < record_size)
            return 0;
        /* the handshake's header may itself come split across records */
        for (Py_ssize_t i = 0; gathered + i < HANDSHAKE_HEADER && i < record_size; i++)
            header[gathered + i] = data[offset + i];
        gathered += record_size;
        offset += record_size;
        if (gathered >= HANDSHAKE_HEADER) {
            needed = ((Py_ssize_t)header[1] << 16 | (Py_ssize_t)header[2] << 8 | header[3]) + HANDSHAKE_HEADER;
            if (gathered >= needed)
                break;
        }
    }
    /* Every record up to `offset` was checked above: copy the body out of them. */
    Py_ssize_t body_size = needed - HANDSHAKE_HEADER;
    if (needed <= (Py_ssize_t)read16(data + 3)) {
        /* the usual case: the whole handshake in the first record */
        *body_out = PyBytes_FromStringAndSize((const char *)data + RECORD_HEADER + HANDSHAKE_HEADER, body_size);
        return *body_out == NULL ? -1 : 1;
    }
    PyObject *body = PyBytes_FromStringAndSize(NULL, body_size);
    if (body == NULL)
        return -1;
    char *out = PyBytes_AS_STRING(body);
    Py_ssize_t written = 0, stream = 0; /* stream: where in the handshake this record starts */
    for (Py_ssize_t at = 0; written < body_size;) {
        Py_ssize_t record_size = (Py_ssize_t)read16(data + at + 3);
        Py_ssize_t from = stream < HANDSHAKE_HEADER ? HANDSHAKE_HEADER - stream : 0;
        if (from < record_size) {
            Py_ssize_t count = record_size - from;
            if (count > body_size - written)
                count = body_size - written;
            memcpy(out + written, data + at + RECORD_HEADER + from, (size_t)count);
            written += count;
        }
        stream += record_size;
        at += RECORD_HEADER + record_size;
    }
    *body_out = body;
    return 1;
}

/* `pos + length` if that much is left before `end`, else -1 (cut short). */
static Py_ssize_t skip(Py_ssize_t pos, Py_ssize_t end, Py_ssize_t length) {
    return pos >= 0 && length <= end - pos ? pos + length : -1;
}

static int append_bytes(PyObject *list, const unsigned char *start, Py_ssize_t size) {
    PyObject *item = PyBytes_FromStringAndSize((const char *)start, size);
    if (item == NULL)
        return -1;
    int failed = PyList_Append(list, item);
    Py_DECREF(item);
    return failed;
}

/* A server_name extension (data[pos:end]): its one host name appended to `names` if it holds
   exactly one entry and that is a host name. 0, or -1 if cut short (*short_read set) or memory
   ran out. */
static int read_server_names(const unsigned char *data, Py_ssize_t pos, Py_ssize_t end, PyObject *names,
                             int *short_read) {
    pos = skip(pos, end, 2); /* the list's length: read to the extension's end instead */
    Py_ssize_t entries = 0, name_start = 0, name_size = 0;
    unsigned first_kind = 0;
    while (pos >= 0 && pos < end) {
        unsigned kind = data[pos];
        if (skip(pos + 1, end, 2) < 0) {
            pos = -1;
            break;
        }
        Py_ssize_t length = (Py_ssize_t)read16(data + pos + 1);
        Py_ssize_t start = pos + 3;
        pos = skip(start, end, length);
        if (entries++ == 0) {
            first_kind = kind;
            name_start = start;
            name_size = length;
        }
    }
    if (pos < 0) {
        *short_read = 1;
        return -1;
    }
    if (entries == 1 && first_kind == HOST_NAME)
        return append_bytes(names, data + name_start, name_size);
    return 0;
}

/* An ALPN extension (data[pos:end]): its protocols appended to `protocols` (if not NULL). */
static int read_protocols(const unsigned char *data, Py_ssize_t pos, Py_ssize_t end, PyObject *protocols,
                          int *short_read) {
    pos = skip(pos, end, 2); /* the list's length: read to the extension's end instead */
    while (pos >= 0 && pos < end) {
        Py_ssize_t start = pos + 1;
        pos = skip(start, end, data[pos]);
        if (pos >= 0 && protocols != NULL && append_bytes(protocols, data + start, pos - start) < 0)
            return -1;
    }
    if (pos < 0) {
        *short_read = 1;
        return -1;
    }
    return 0;
}

/* Reads a ClientHello body into `names` and `protocols`. 0, or -1 if cut short (*short_read
   set) or memory ran out. */
static int read_body(const unsigned char *data, Py_ssize_t end, PyObject *names, PyObject *protocols,
                     int *short_read) {
    Py_ssize_t pos = skip(0, end, VERSION_AND_RANDOM);
    pos = pos >= 0 && pos < end ? skip(pos + 1, end, data[pos]) : -1;             /* session id */
    pos = skip(pos, end, 2) >= 0 ? skip(pos + 2, end, read16(data + pos) / 2 * 2) : -1; /* whole suites */
    pos = pos >= 0 && pos < end ? skip(pos + 1, end, data[pos]) : -1;             /* compression methods */
    if (pos < 0) {
        *short_read = 1;
        return -1;
    }
    if (pos == end)
        return 0; /* no extensions at all */
    pos = skip(pos, end, 2); /* the extensions' length: read to the body's end instead */
    int alpn_seen = 0;
    while (pos >= 0 && pos < end) {
        if (skip(pos, end, 4) < 0) {
            pos = -1;
            break;
        }
        unsigned kind = read16(data + pos);
        Py_ssize_t length = (Py_ssize_t)read16(data + pos + 2);
        Py_ssize_t start = pos + 4;
        pos = skip(start, end, length);
        if (pos < 0)
            break;
        if (kind == EXT_SERVER_NAME) {
            if (read_server_names(data, start, pos, names, short_read) < 0)
                return -1;
        } else if (kind == EXT_ALPN) {
            if (read_protocols(data, start, pos, alpn_seen ? NULL : protocols, short_read) < 0)
                return -1;
            alpn_seen = 1;
        }
    }
    if (pos < 0) {
        *short_read = 1;
        return -1;
    }
    return 0;
}

/* client_hello(data): None | (body, candidate server names, ALPN protocols); ValueError. */
static PyObject *client_hello(PyObject *module, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *body = NULL;
    int found = gather((const unsigned char *)view.buf, view.len, &body);
    PyBuffer_Release(&view);
    if (found <= 0)
        return found < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *names = PyList_New(0);
    PyObject *protocols = PyList_New(0);
    int short_read = 0;
    if (names == NULL || protocols == NULL ||
        read_body((const unsigned char *)PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), names, protocols,
                  &short_read) < 0) {
        if (short_read)
            PyErr_SetString(PyExc_ValueError, "Invalid ClientHello");
        Py_DECREF(body);
        Py_XDECREF(names);
        Py_XDECREF(protocols);
        return NULL;
    }
    return Py_BuildValue("(NNN)", body, names, protocols);
}

static PyMethodDef module_methods[] = {
    {"client_hello", client_hello, METH_O,
     "client_hello(data) -> None | (handshake body, candidate server names, ALPN protocols)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hello_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "schoolgate.proxy._hello",
    .m_doc = "A TLS ClientHello gathered from its records and read for its SNI and ALPN (see proxy/_hello.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__hello(void) { return PyModule_Create(&hello_module); }
