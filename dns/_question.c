/* The question's name of a DNS query, read from the packet in one pass (schoolgate.dns.fastpath).

The fast path answers only plain names: labels of at most 63 bytes ending in the root label,
no compression pointer, at most 255 bytes in all, ASCII without a dot inside a label. For such
a name this returns where the name ends, its wire form in lower case (the key of the fast
path's tables) and its dotted lower-case form (the name the policy is asked about), as
wire.parse_query reads them; for anything else None, and the full parser in Python decides.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define HEADER_SIZE 12
#define MAX_LABEL 63
#define MAX_NAME 255

static PyObject *plain_name(PyObject *module, PyObject *packet) {
    if (!PyBytes_Check(packet)) {
        PyErr_Format(PyExc_TypeError, "plain_name() needs bytes, not %.100s", Py_TYPE(packet)->tp_name);
        return NULL;
    }
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(packet);
    Py_ssize_t size = PyBytes_GET_SIZE(packet);
    Py_ssize_t offset = HEADER_SIZE;
    for (;;) {
        if (offset >= size)
            Py_RETURN_NONE;  /* runs past the end */
        unsigned length = data[offset];
        if (length == 0)
            break;
        if (length > MAX_LABEL)
            Py_RETURN_NONE;  /* a pointer or a reserved label type: the full parser's */
        offset += (Py_ssize_t)length + 1;
    }
    offset += 1;  /* past the root label */
    if (offset > HEADER_SIZE + MAX_NAME || offset + 4 > size)
        Py_RETURN_NONE;  /* over 255 bytes, or the type and class are missing */
    Py_ssize_t wire_size = offset - HEADER_SIZE;
    /* ASCII only, and no byte of the wire form a dot (a dot inside a label would make the dotted
       name say something else than the labels; a 46-byte label is sent to the full parser too) */
    for (Py_ssize_t i = HEADER_SIZE; i < offset; i++) {
        if (data[i] >= 0x80 || data[i] == '.')
            Py_RETURN_NONE;
    }
    PyObject *wire = PyBytes_FromStringAndSize(NULL, wire_size);
    if (wire == NULL)
        return NULL;
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
        return NULL;
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
    PyObject *end = PyLong_FromSsize_t(offset);
    if (end == NULL) {
        Py_DECREF(wire);
        Py_DECREF(dotted);
        return NULL;
    }
    PyObject *result = PyTuple_New(3);
    if (result == NULL) {
        Py_DECREF(end);
        Py_DECREF(wire);
        Py_DECREF(dotted);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, end);
    PyTuple_SET_ITEM(result, 1, wire);
    PyTuple_SET_ITEM(result, 2, dotted);
    return result;
}

static PyMethodDef module_methods[] = {
    {"plain_name", plain_name, METH_O,
     "plain_name(packet) -> (end, wire name lower-cased, dotted name) | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef question_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "schoolgate.dns._question",
    .m_doc = "The question's name of a plain DNS query, read in one pass (see dns/_question.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__question(void) { return PyModule_Create(&question_module); }
