/* A plain DNS query read from the packet in one pass, and a reply to it put together in one
allocation (schoolgate.dns.fastpath).

The fast path answers only plain names: labels of at most 63 bytes ending in the root label,
no compression pointer, at most 255 bytes in all, ASCII without a dot inside a label. For such
a name `plain_name` returns where the name ends, its wire form in lower case (the key of the fast
path's tables) and its dotted lower-case form (the name the policy is asked about), as
wire.parse_query reads them; for anything else None, and the full parser in Python decides.
`plain_query` reads the whole query the fast path answers (the header, that name, the type and
class, the one OPT record if any), with exactly the fast path's checks, and `reply` puts the
query's ID and question between a reply's header and its records.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define HEADER_SIZE 12
#define MAX_LABEL 63
#define MAX_NAME 255

/* Reads the plain name at HEADER_SIZE of `data`. Returns 1 and sets *end (past the root label),
   *wire and *dotted (new references) for a plain name; 0 for anything else; -1 with an exception
   set if memory ran out. */
static int read_plain_name(const unsigned char *data, Py_ssize_t size, Py_ssize_t *end, PyObject **wire_out,
                           PyObject **dotted_out) {
    Py_ssize_t offset = HEADER_SIZE;
    for (;;) {
        if (offset >= size)
            return 0;  /* runs past the end */
        unsigned length = data[offset];
        if (length == 0)
            break;
        if (length > MAX_LABEL)
            return 0;  /* a pointer or a reserved label type: the full parser's */
        offset += (Py_ssize_t)length + 1;
    }
    offset += 1;  /* past the root label */
    if (offset > HEADER_SIZE + MAX_NAME || offset + 4 > size)
        return 0;  /* over 255 bytes, or the type and class are missing */
    Py_ssize_t wire_size = offset - HEADER_SIZE;
    /* ASCII only, and no byte of the wire form a dot (a dot inside a label would make the dotted
       name say something else than the labels; a 46-byte label is sent to the full parser too) */
    for (Py_ssize_t i = HEADER_SIZE; i < offset; i++) {
        if (data[i] >= 0x80 || data[i] == '.')
            return 0;
    }
    PyObject *wire = PyBytes_FromStringAndSize(NULL, wire_size);
    if (wire == NULL)
        return -1;
    char *lowered = PyBytes_AS_STRING(wire);
    for (Py_ssize_t i = 0; i < wire_size; i++) {
        unsigned char c = data[HEADER_SIZE + i];
        lowered[i] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    /* the dotted name: the wire form without its first length byte and the root label, each
       other length byte a dot ("" for the root itself) */
    Py_ssize_t dotted_size = wire_size > 1 ? wire_size - 2 : 0;
    PyObject *dotted = PyUnicode_New(dotted_size, 127);
    if (dotted == NULL) {
        Py_DECREF(wire);
        return -1;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(dotted);
    Py_ssize_t next_length = 0;  /* index in `lowered` of the next length byte */
    for (Py_ssize_t i = 0; i < dotted_size; i++) {
        Py_ssize_t at = i + 1;
        if (at == next_length + (unsigned char)lowered[next_length] + 1) {
            next_length = at;
            out[i] = '.';
        } else {
            out[i] = (Py_UCS1)lowered[at];
        }
    }
    *end = offset;
    *wire_out = wire;
    *dotted_out = dotted;
    return 1;
}

static int need_bytes(PyObject *value, const char *function) {
    if (PyBytes_Check(value))
        return 1;
    PyErr_Format(PyExc_TypeError, "%s() needs bytes, not %.100s", function, Py_TYPE(value)->tp_name);
    return 0;
}

static PyObject *plain_name(PyObject *module, PyObject *packet) {
    if (!need_bytes(packet, "plain_name"))
        return NULL;
    Py_ssize_t end;
    PyObject *wire, *dotted;
    int found = read_plain_name((const unsigned char *)PyBytes_AS_STRING(packet), PyBytes_GET_SIZE(packet), &end,
                                &wire, &dotted);
    if (found < 0)
        return NULL;
    if (found == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(nNN)", end, wire, dotted);
}

#define FLAG_QR 0x8000
#define OPCODE_MASK 0x7800
#define CLASS_IN 1
#define TYPE_OPT 41
#define FIRST_META_TYPE 128
#define PLAIN_UDP_SIZE 512

static unsigned read16(const unsigned char *at) { return (unsigned)at[0] << 8 | at[1]; }

/* plain_query(packet, edns_udp_size): the fast path's reading of a query, or None. */
static PyObject *plain_query(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "plain_query() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *packet = args[0];
    if (!need_bytes(packet, "plain_query"))
        return NULL;
    long edns_udp_size = PyLong_AsLong(args[1]);
    if (edns_udp_size == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(packet);
    Py_ssize_t size = PyBytes_GET_SIZE(packet);
    if (size < 17)
        Py_RETURN_NONE;
    unsigned flags = read16(data + 2);
    unsigned arcount = read16(data + 10);
    /* a response, or an opcode other than QUERY; not one question; answers or authority; more
       than one additional record: the full parser says what to do */
    if (flags & (FLAG_QR | OPCODE_MASK) || read16(data + 4) != 1 || read16(data + 6) || read16(data + 8) ||
        arcount > 1)
        Py_RETURN_NONE;
    Py_ssize_t end;
    PyObject *wire, *dotted;
    int found = read_plain_name(data, size, &end, &wire, &dotted);
    if (found <= 0)
        return found < 0 ? NULL : Py_NewRef(Py_None);
    unsigned qtype = read16(data + end);
    unsigned qclass = read16(data + end + 2);
    Py_ssize_t question_end = end + 4;
    int edns = 0, dnssec_ok = 0;
    long max_size = PLAIN_UDP_SIZE;
    int plain = qclass == CLASS_IN && qtype != 0 && qtype < FIRST_META_TYPE;  /* else refused, meta, transfer */
    if (plain && arcount) {
        /* One OPT record at the root, EDNS version 0, wholly inside the packet: anything else
           (TSIG, a bad version, a short record) is the full parser's to answer. */
        const unsigned char *opt = data + question_end;
        if (question_end + 11 > size || opt[0] != 0) {
            plain = 0;
        } else {
            unsigned rtype = read16(opt + 1);
            long udp_size = (long)read16(opt + 3);
            unsigned long ttl = (unsigned long)read16(opt + 5) << 16 | read16(opt + 7);
            Py_ssize_t rdlength = (Py_ssize_t)read16(opt + 9);
            if (rtype != TYPE_OPT || ttl & 0xFF0000UL || question_end + 11 + rdlength > size) {
                plain = 0;
            } else {
                edns = 1;
                dnssec_ok = (ttl & 0x8000UL) != 0;
                long offered = udp_size < edns_udp_size ? udp_size : edns_udp_size;
                max_size = offered > PLAIN_UDP_SIZE ? offered : PLAIN_UDP_SIZE;
            }
        }
    }
    if (!plain) {
        Py_DECREF(wire);
        Py_DECREF(dotted);
        Py_RETURN_NONE;
    }
    return Py_BuildValue("(IInNNINNl)", read16(data), flags, question_end, wire, dotted, qtype,
                         PyBool_FromLong(edns), PyBool_FromLong(dnssec_ok), max_size);
}

/* reply(packet, question_end, head, tail): the query's ID, `head` (the reply's flags and counts,
   10 bytes), the query's question (packet[12:question_end]) and `tail`, in one allocation. */
static PyObject *reply(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "reply() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *packet = args[0], *head = args[2], *tail = args[3];
    if (!need_bytes(packet, "reply") || !need_bytes(head, "reply") || !need_bytes(tail, "reply"))
        return NULL;
    Py_ssize_t question_end = PyLong_AsSsize_t(args[1]);
    if (question_end == -1 && PyErr_Occurred())
        return NULL;
    if (question_end < HEADER_SIZE || question_end > PyBytes_GET_SIZE(packet)) {
        PyErr_SetString(PyExc_ValueError, "reply(): the question must end inside the packet, after its header");
        return NULL;
    }
    if (PyBytes_GET_SIZE(head) != HEADER_SIZE - 2) {
        PyErr_SetString(PyExc_ValueError, "reply(): the head is the 10 bytes after the ID");
        return NULL;
    }
    Py_ssize_t question = question_end - HEADER_SIZE, tail_size = PyBytes_GET_SIZE(tail);
    PyObject *out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + question + tail_size);
    if (out == NULL)
        return NULL;
    char *at = PyBytes_AS_STRING(out);
    const char *data = PyBytes_AS_STRING(packet);
    memcpy(at, data, 2);
    memcpy(at + 2, PyBytes_AS_STRING(head), HEADER_SIZE - 2);
    memcpy(at + HEADER_SIZE, data + HEADER_SIZE, (size_t)question);
    memcpy(at + HEADER_SIZE + question, PyBytes_AS_STRING(tail), (size_t)tail_size);
    return out;
}

static PyMethodDef module_methods[] = {
    {"plain_name", plain_name, METH_O,
     "plain_name(packet) -> (end, wire name lower-cased, dotted name) | None"},
    {"plain_query", (PyCFunction)(void (*)(void))plain_query, METH_FASTCALL,
     "plain_query(packet, edns_udp_size) -> (id, flags, question end, wire name, dotted name, type, edns, "
     "dnssec_ok, max size) | None"},
    {"reply", (PyCFunction)(void (*)(void))reply, METH_FASTCALL,
     "reply(packet, question_end, head, tail) -> the query's ID + head + its question + tail"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef question_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "schoolgate.dns._question",
    .m_doc = "A plain DNS query read in one pass, and a reply put together (see dns/_question.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__question(void) { return PyModule_Create(&question_module); }
