/* A UDP socket's waiting datagrams read in one system call, and the answers sent in one
(schoolgate.dns.server's UdpListener).

Per query the DNS worker made two system calls through Python's socket module (recvfrom,
sendto): each a call into the kernel, a bytes object and an address tuple made or parsed (the
sender's address as text, then parsed back from text to send the answer). Under load several
queries wait when the worker wakes, so `receive` takes up to `count` of them with recvmmsg and
`send` gives the kernel every answer ready at the end of that wake-up with sendmmsg. A query's
sender is kept as the kernel gave it (its sockaddr, as bytes), so its answer goes back without
the address ever being parsed.

Linux only, as the appliance is (recvmmsg and sendmmsg are Linux's).
*/
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_BATCH 64          /* datagrams per call at most (the listener's READ_BATCH) */
#define DATAGRAM_MAX 65535    /* the largest UDP payload, as recvfrom(65535) read */

/* One buffer per slot, made on the first call and kept: the kernel writes only a datagram's
   own bytes, so the pages of a buffer a query never reached are never resident. The module is
   used from the event loop's one thread, under the GIL. */
static unsigned char *buffers = NULL;

/* The sender's address as the policy spells it: dotted IPv4, or IPv6 text (an IPv4-mapped IPv6
   address as its IPv4; no scope), as dns.server's _client_ip makes it of recvfrom's tuple. */
static PyObject *client_ip(const struct sockaddr_storage *address, socklen_t length) {
    char text[INET6_ADDRSTRLEN];
    if (address->ss_family == AF_INET && length >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)address;
        if (inet_ntop(AF_INET, &v4->sin_addr, text, sizeof text) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
    } else if (address->ss_family == AF_INET6 && length >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)address;
        const void *raw = &v6->sin6_addr;
        int family = AF_INET6;
        if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
            raw = &v6->sin6_addr.s6_addr[12];
            family = AF_INET;
        }
        if (inet_ntop(family, raw, text, sizeof text) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
    } else {
        PyErr_Format(PyExc_OSError, "a datagram from an address of family %d", (int)address->ss_family);
        return NULL;
    }
    return PyUnicode_FromString(text);
}

/* receive(fd, count) -> [(datagram, client ip, sender)]: up to `count` waiting datagrams, without
   waiting ([] when none waits). `sender` is the kernel's sockaddr, for `send`. */
/* A file descriptor from a Python int; -1 with an exception set if it is not one. */
static int descriptor(PyObject *value) {
    long fd = PyLong_AsLong(value);
    if (fd == -1 && PyErr_Occurred())
        return -1;
    if (fd < 0 || fd > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return -1;
    }
    return (int)fd;
}

static PyObject *dg_receive(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "receive(fd, count)");
        return NULL;
    }
    int fd = descriptor(args[0]);
    if (fd == -1)
        return NULL;
    long count = PyLong_AsLong(args[1]);
    if (count == -1 && PyErr_Occurred())
        return NULL;
    if (count < 1 || count > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "count must be 1 to %d", MAX_BATCH);
        return NULL;
    }
    if (buffers == NULL) {
        buffers = PyMem_RawMalloc((size_t)MAX_BATCH * DATAGRAM_MAX);
        if (buffers == NULL)
            return PyErr_NoMemory();
    }
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    struct sockaddr_storage senders[MAX_BATCH];
    memset(messages, 0, sizeof(struct mmsghdr) * (size_t)count);
    for (long i = 0; i < count; i++) {
        vectors[i].iov_base = buffers + (size_t)i * DATAGRAM_MAX;
        vectors[i].iov_len = DATAGRAM_MAX;
        messages[i].msg_hdr.msg_iov = &vectors[i];
        messages[i].msg_hdr.msg_iovlen = 1;
        messages[i].msg_hdr.msg_name = &senders[i];
        messages[i].msg_hdr.msg_namelen = sizeof senders[i];
    }
    int received;
    Py_BEGIN_ALLOW_THREADS
    received = recvmmsg(fd, messages, (unsigned int)count, MSG_DONTWAIT, NULL);
    Py_END_ALLOW_THREADS
    if (received < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return PyList_New(0);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *found = PyList_New(received);
    if (found == NULL)
        return NULL;
    for (int i = 0; i < received; i++) {
        PyObject *ip = client_ip(&senders[i], messages[i].msg_hdr.msg_namelen);
        if (ip == NULL) {
            Py_DECREF(found);
            return NULL;
        }
        PyObject *item = Py_BuildValue("(y#Ny#)", (const char *)vectors[i].iov_base, (Py_ssize_t)messages[i].msg_len,
                                       ip, (const char *)&senders[i], (Py_ssize_t)messages[i].msg_hdr.msg_namelen);
        if (item == NULL) {
            Py_DECREF(found);
            return NULL;
        }
        PyList_SET_ITEM(found, i, item);
    }
    return found;
}

/* send(fd, [(answer, sender)]) -> (sent, failed): each answer to its sender, without waiting.
   When the socket's buffer is full the answers left are not sent (as a full buffer dropped
   sendto's: the client asks again); an answer the kernel refuses for itself (a sender it cannot
   reach) is counted failed and the rest are still sent. */
static PyObject *dg_send(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "send(fd, replies)");
        return NULL;
    }
    int fd = descriptor(args[0]);
    if (fd == -1)
        return NULL;
    PyObject *replies = args[1];
    if (!PyList_Check(replies)) {
        PyErr_SetString(PyExc_TypeError, "send: replies must be a list of (answer, sender)");
        return NULL;
    }
    Py_ssize_t total = PyList_GET_SIZE(replies);
    Py_ssize_t sent = 0, failed = 0;
    struct mmsghdr messages[MAX_BATCH];
    struct iovec vectors[MAX_BATCH];
    /* The list may not change under us: nothing here runs Python code, and the GIL is held
       except around the system call, while the items' references keep their buffers alive. */
    for (Py_ssize_t start = 0; start < total;) {
        Py_ssize_t chunk = total - start < MAX_BATCH ? total - start : MAX_BATCH;
        memset(messages, 0, sizeof(struct mmsghdr) * (size_t)chunk);
        for (Py_ssize_t i = 0; i < chunk; i++) {
            PyObject *item = PyList_GET_ITEM(replies, start + i);
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 || !PyBytes_Check(PyTuple_GET_ITEM(item, 0)) ||
                !PyBytes_Check(PyTuple_GET_ITEM(item, 1))) {
                PyErr_SetString(PyExc_TypeError, "send: each reply is (answer bytes, sender bytes)");
                return NULL;
            }
            PyObject *answer = PyTuple_GET_ITEM(item, 0), *sender = PyTuple_GET_ITEM(item, 1);
            Py_ssize_t sender_size = PyBytes_GET_SIZE(sender);
            if (sender_size < (Py_ssize_t)sizeof(sa_family_t) || sender_size > (Py_ssize_t)sizeof(struct sockaddr_storage)) {
                PyErr_SetString(PyExc_ValueError, "send: a sender is a socket address as receive gave it");
                return NULL;
            }
            vectors[i].iov_base = PyBytes_AS_STRING(answer);
            vectors[i].iov_len = (size_t)PyBytes_GET_SIZE(answer);
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            messages[i].msg_hdr.msg_name = PyBytes_AS_STRING(sender);
            messages[i].msg_hdr.msg_namelen = (socklen_t)sender_size;
        }
        Py_ssize_t done = 0;
        while (done < chunk) {
            int result;
            Py_BEGIN_ALLOW_THREADS
            result = sendmmsg(fd, messages + done, (unsigned int)(chunk - done), MSG_DONTWAIT);
            Py_END_ALLOW_THREADS
            if (result > 0) {
                done += result;
                sent += result;
            } else if (result < 0 && errno == EINTR) {
                continue;
            } else if (result < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                return Py_BuildValue("(nn)", sent, failed);  /* full: the clients will retry */
            } else {
                done += 1;  /* this answer's own failure (sendmmsg reports it for the first) */
                failed += 1;
            }
        }
        start += chunk;
    }
    return Py_BuildValue("(nn)", sent, failed);
}

static PyMethodDef module_methods[] = {
    {"receive", (PyCFunction)(void (*)(void))dg_receive, METH_FASTCALL,
     "receive(fd, count) -> [(datagram, client ip, sender)], without waiting"},
    {"send", (PyCFunction)(void (*)(void))dg_send, METH_FASTCALL,
     "send(fd, [(answer, sender)]) -> (sent, failed), without waiting"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef datagrams_module = {
    PyModuleDef_HEAD_INIT,
    "schoolgate.dns._datagrams",
    "A UDP socket's datagrams received and sent in batches (recvmmsg, sendmmsg).",
    -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__datagrams(void) {
    return PyModule_Create(&datagrams_module);
}
