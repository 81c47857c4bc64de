/* A listening socket's waiting connections accepted, each with its original destination and
its first bytes, in one call (for schoolgate.proxy.front's FrontDoor).

Per connection the front door made, in Python: accept (a descriptor and the peer's address
tuple), a socket object around the descriptor, SO_ORIGINAL_DST read as bytes then unpacked and
made into text, and a first read (a 64 KiB bytes object made, then shrunk). For a connection
killed at its SNI that wrapping was a noticeable part of its CPU. `accept_batch` makes the same
system calls (accept4, getsockopt, recv) for every connection waiting at a wake-up and builds
only what the front door keeps: the descriptor, the peer and destination tuples, the bytes read.

The GIL is held throughout. Every call here is non-blocking (the listener must be, and the
first read is MSG_DONTWAIT), so a release would let no other thread wait less, and taking the
GIL back after each system call costs more than the call's wait: on a loop thread it can even
wait behind a busy thread for the interpreter's switch interval. Holding it also makes the one
read buffer below safe: between a recv into it and its copy into a bytes object no Python code
runs.

Linux only, as the appliance is (accept4, SO_ORIGINAL_DST).
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
#include <unistd.h>

#define MAX_BATCH 64         /* connections per call at most (the front door's ACCEPT_BATCH) */
#define READ_MAX 65536       /* first bytes read at most (the front door's MAX_HELLO) */
#define SO_ORIGINAL_DST 80   /* linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h) is 80 too */

/* The first read's buffer, made on the first call that reads and kept: its bytes are copied
   out at once, so one serves every connection. */
static char *read_buffer = NULL;

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

/* (ip, port), the ip's reference taken over; NULL (and ip released) on failure. */
static PyObject *address_pair(PyObject *ip, int port) {
    PyObject *port_object = PyLong_FromLong(port);
    PyObject *pair = port_object == NULL ? NULL : PyTuple_New(2);
    if (pair == NULL) {
        Py_DECREF(ip);
        Py_XDECREF(port_object);
        return NULL;
    }
    PyTuple_SET_ITEM(pair, 0, ip);
    PyTuple_SET_ITEM(pair, 1, port_object);
    return pair;
}

/* Text of an address, as Python's socket module makes it (inet_ntop: an IPv4-mapped IPv6
   address as ::ffff:a.b.c.d, no scope). */
static PyObject *address_text(int family, const void *raw) {
    char text[INET6_ADDRSTRLEN];
    if (inet_ntop(family, raw, text, sizeof text) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    return PyUnicode_FromString(text);
}

/* The peer as socket.accept() gives it: (ip, port), or (ip, port, flowinfo, scope_id) for IPv6. */
static PyObject *peer_tuple(const struct sockaddr_storage *peer) {
    if (peer->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)peer;
        PyObject *ip = address_text(AF_INET, &v4->sin_addr);
        if (ip == NULL)
            return NULL;
        return address_pair(ip, (int)ntohs(v4->sin_port));
    }
    if (peer->ss_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)peer;
        PyObject *ip = address_text(AF_INET6, &v6->sin6_addr);
        if (ip == NULL)
            return NULL;
        return Py_BuildValue("(NiII)", ip, (int)ntohs(v6->sin6_port), (unsigned int)ntohl(v6->sin6_flowinfo),
                             (unsigned int)v6->sin6_scope_id);
    }
    PyErr_Format(PyExc_OSError, "a connection from an address of family %d", (int)peer->ss_family);
    return NULL;
}

/* Where the connection was going before the gateway's redirect: (ip, port); None when the
   kernel has none for it (not redirected, no connection tracking: ENOENT), or the call fails.
   An IPv4 connection on a dual-stack socket (its peer IPv4-mapped) is asked at SOL_IP, as
   mitmproxy's original_addr asks (it tells the two apart by getsockname(); the peer's address
   tells the same without a system call). */
static PyObject *original_destination(int fd, const struct sockaddr_storage *peer) {
    int v4 = peer->ss_family == AF_INET ||
             (peer->ss_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)peer)->sin6_addr));
    PyObject *ip;
    int port;
    if (v4) {
        struct sockaddr_in destination;
        socklen_t length = sizeof destination;
        memset(&destination, 0, sizeof destination);
        if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &destination, &length) != 0 || destination.sin_family != AF_INET)
            Py_RETURN_NONE;
        ip = address_text(AF_INET, &destination.sin_addr);
        port = ntohs(destination.sin_port);
    } else {
        struct sockaddr_in6 destination;
        socklen_t length = sizeof destination;
        memset(&destination, 0, sizeof destination);
        if (getsockopt(fd, SOL_IPV6, SO_ORIGINAL_DST, &destination, &length) != 0 ||
            destination.sin6_family != AF_INET6)
            Py_RETURN_NONE;
        ip = address_text(AF_INET6, &destination.sin6_addr);
        port = ntohs(destination.sin6_port);
    }
    if (ip == NULL)
        return NULL;
    return address_pair(ip, port);
}

/* The first bytes waiting on a new connection, without waiting: the bytes; b"" when the
   connection has ended (EOF, a reset, or any other error a read reports: the kernel gives a
   socket's error once, so the next read would find it ended anyway); None when nothing has
   come yet (or the kernel is short of memory for now: the caller reads again on readiness). */
static PyObject *first_bytes(int fd, size_t read_max) {
    ssize_t got;
    do {
        got = recv(fd, read_buffer, read_max, MSG_DONTWAIT);
    } while (got < 0 && errno == EINTR);
    if (got >= 0)
        return PyBytes_FromStringAndSize(read_buffer, got);
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOMEM || errno == ENOBUFS)
        Py_RETURN_NONE;
    return PyBytes_FromStringAndSize(NULL, 0);
}

/* An accept error that concerns the one connection (Linux passes a pending network error of
   the new connection to accept, and a connection may be aborted while it waits): skipped, and
   the next one accepted. Any other error stops the batch (EMFILE, ENFILE, ENOBUFS, ENOMEM:
   only waiting helps; EBADF, EINVAL: not a listening socket). */
static int connection_own_error(int error) {
    switch (error) {
    case ECONNABORTED:
    case ECONNRESET:
    case EPROTO:
    case EPERM:
    case ETIMEDOUT:
    case ENETDOWN:
    case ENETUNREACH:
    case EHOSTDOWN:
    case EHOSTUNREACH:
    case ENONET:
    case ENOPROTOOPT:
    case EOPNOTSUPP:
        return 1;
    default:
        return 0;
    }
}

/* Close every descriptor in `accepted` (a list of connection tuples): on a failure to build
   the answer, no connection accepted by this call may outlive it. */
static void close_accepted(PyObject *accepted) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(accepted); i++)
        close((int)PyLong_AsLong(PyTuple_GET_ITEM(PyList_GET_ITEM(accepted, i), 0)));
}

static PyObject *ac_accept_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "accept_batch(listen_fd, limit, read_max, original_destination)");
        return NULL;
    }
    int listen_fd = descriptor(args[0]);
    if (listen_fd == -1)
        return NULL;
    long limit = PyLong_AsLong(args[1]);
    if (limit == -1 && PyErr_Occurred())
        return NULL;
    if (limit < 1 || limit > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "limit must be 1 to %d", MAX_BATCH);
        return NULL;
    }
    long read_max = PyLong_AsLong(args[2]);
    if (read_max == -1 && PyErr_Occurred())
        return NULL;
    if (read_max < 0 || read_max > READ_MAX) {
        PyErr_Format(PyExc_ValueError, "read_max must be 0 to %d", READ_MAX);
        return NULL;
    }
    int want_destination = PyObject_IsTrue(args[3]);
    if (want_destination < 0)
        return NULL;
    if (read_max > 0 && read_buffer == NULL) {
        read_buffer = PyMem_RawMalloc(READ_MAX);
        if (read_buffer == NULL)
            return PyErr_NoMemory();
    }
    PyObject *accepted = PyList_New(0);
    if (accepted == NULL)
        return NULL;
    int stopped_by = 0;
    long skipped = 0;
    for (long attempt = 0; attempt < limit; attempt++) {
        struct sockaddr_storage peer;
        socklen_t peer_length = sizeof peer;
        int fd = accept4(listen_fd, (struct sockaddr *)&peer, &peer_length, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (errno == EINTR)
                continue;  /* a signal: the attempt counts, so a storm of them cannot hold the loop here */
            if (connection_own_error(errno)) {
                skipped++;
                continue;
            }
            stopped_by = errno;
            break;
        }
        PyObject *fd_object = PyLong_FromLong(fd);
        PyObject *peer_object = fd_object == NULL ? NULL : peer_tuple(&peer);
        PyObject *destination = NULL, *data = NULL;
        if (peer_object != NULL)
            destination = want_destination ? original_destination(fd, &peer) : Py_NewRef(Py_None);
        if (destination != NULL) {
            /* A connection the caller drops for want of a destination is not read. */
            int dropped = want_destination && destination == Py_None;
            data = read_max == 0 || dropped ? Py_NewRef(Py_None) : first_bytes(fd, (size_t)read_max);
        }
        PyObject *item = data == NULL ? NULL : PyTuple_New(4);
        if (item == NULL) {
            Py_XDECREF(fd_object);
            Py_XDECREF(peer_object);
            Py_XDECREF(destination);
            Py_XDECREF(data);
            close(fd);
            close_accepted(accepted);
            Py_DECREF(accepted);
            return NULL;
        }
        PyTuple_SET_ITEM(item, 0, fd_object);
        PyTuple_SET_ITEM(item, 1, peer_object);
        PyTuple_SET_ITEM(item, 2, destination);
        PyTuple_SET_ITEM(item, 3, data);
        int appended = PyList_Append(accepted, item);
        Py_DECREF(item);  /* (freeing the tuple does not close its descriptor) */
        if (appended != 0) {
            close(fd);
            close_accepted(accepted);
            Py_DECREF(accepted);
            return NULL;
        }
    }
    PyObject *result = PyTuple_New(3);
    PyObject *errno_object = PyLong_FromLong(stopped_by);
    PyObject *skipped_object = PyLong_FromLong(skipped);
    if (result == NULL || errno_object == NULL || skipped_object == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(errno_object);
        Py_XDECREF(skipped_object);
        close_accepted(accepted);
        Py_DECREF(accepted);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, accepted);
    PyTuple_SET_ITEM(result, 1, errno_object);
    PyTuple_SET_ITEM(result, 2, skipped_object);
    return result;
}

static PyMethodDef module_methods[] = {
    {"accept_batch", (PyCFunction)(void (*)(void))ac_accept_batch, METH_FASTCALL,
     "accept_batch(listen_fd, limit, read_max, original_destination) -> ([(fd, peer, destination, first_bytes)], "
     "stopped_by_errno, skipped)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accept_module = {
    PyModuleDef_HEAD_INIT,
    "schoolgate.proxy._accept",
    "A listening socket's connections accepted with their original destination and first bytes, in one call.",
    -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__accept(void) {
    return PyModule_Create(&accept_module);
}
