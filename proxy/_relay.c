/* The front door's passed-through connections, their bytes copied in C (for
schoolgate.proxy.relay's SplicePoller).

Copied from Python readiness callbacks, a spliced connection's bytes cost a callback, a bytes
object per read, a socket method per system call and a dict probe per registration, and each
wake-up a turn of the event loop: with them here, a passthrough in the front door takes about
a third fewer instructions (bench/proxy/instructions.py: 355,000 to 247,000). `Relays` owns
the spliced connections (the device's socket and the server's, each one's descriptor) and the
whole of their life between the front door's PASS and their end: the dial's ClientHello, every
read and send, flow control, half-closes and errors. Python runs once when a relay is added and
once when it ends (its token handed back).

`wait(timeout_ms, maxevents)` is the epoll_wait of the epoll given at construction (the loop's
own on the proxy daemon's loop, else the splice poller's): the events of the relays' sockets are
handled here, and those of every other descriptor in that epoll are returned for Python to
dispatch (the loop's selector keys, the poller's readers), with the relays that ended. A wake-up
that concerns the relays alone does not return: it waits again for what is left of the timeout,
so the event loop's own Python runs only when it has something to do.

What a relay does is what the Python relay it replaced (in schoolgate.proxy.relay) did, system
call for system call:
- the server is dialled by the caller (a non-blocking connect); once its socket is writable the
  ClientHello is sent, and a send error (ECONNREFUSED and the like) ends the relay unspliced;
- per wake-up what a socket holds (up to READ_SIZE) is read and sent on at once; only what the
  other side does not take now is kept (malloc'd), and the source is then not read until it has
  gone: nothing is buffered beyond one read per direction;
- a socket whose peer has closed (EPOLLRDHUP or EPOLLHUP) is read to its FIN in the same
  wake-up;
- a FIN is passed on as a half-close (shutdown SHUT_WR); a relay ends when both sides have sent
  theirs and everything is delivered, or at once on an error either side (both closed, what was
  not delivered dropped);
- a socket's epoll registration changes only when what it waits for changes, and closing a
  relay's sockets takes them out of the epoll (no epoll_ctl for it).

The GIL is held while a wake-up is handled (every call is non-blocking, as in proxy/_accept.c),
and released only around a blocking epoll_wait. That also makes the one read buffer safe: its
bytes are sent, or copied out, before any other relay reads.

Linux only, as the appliance is (epoll, EPOLLRDHUP, MSG_NOSIGNAL).
*/
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024) /* bytes read per wake-up of a spliced socket (as asyncio's transports) */
#define READABLE (EPOLLIN | EPOLLRDHUP)
#define WRITABLE EPOLLOUT
#define PEER_CLOSED (EPOLLRDHUP | EPOLLHUP)
#define SEND_FLAGS (MSG_NOSIGNAL | MSG_DONTWAIT)
#define DEVICE 0
#define SERVER 1
#define MAX_EVENTS 4096 /* events taken per wait at most (the rest come with the next) */

/* The read buffer, made on the first read and kept: every read's bytes are sent, or the rest
   copied out, before the next read. */
static char *read_buffer = NULL;

/* One socket of a relay. */
typedef struct {
    int fd;
    uint32_t registered; /* what the epoll watches it for; 0: not in the epoll */
    int reading;         /* its bytes are read when it is readable */
    int finished;        /* it has sent its FIN */
    char *waiting;       /* bytes it has not taken yet (NULL: none), of `waiting_length` */
    size_t waiting_length, waiting_sent;
    unsigned long read_wakeups; /* wake-ups that read it (for tests) */
} Side;

typedef struct Relay {
    Side side[2]; /* DEVICE, SERVER */
    int dialling; /* the ClientHello waits for the server's socket to be writable */
    int ended;
    int error; /* the errno that ended it, 0 for an orderly end */
    int64_t last_active; /* monotonic ns: the dial, or the last byte read or delivered */
    PyObject *token;
    struct Relay *previous, *next; /* among the live relays; `next` also chains the ended */
} Relay;

typedef struct {
    PyObject_HEAD
    int epoll_fd;
    Relay **by_fd; /* descriptor -> its live relay */
    size_t by_fd_size;
    Relay *live;
    Relay *ended_first, *ended_last; /* ended, their tokens not yet handed back */
    Py_ssize_t count, dialling;
    unsigned long long spliced; /* ClientHellos sent to the server */
    unsigned long long ctl_add, ctl_modify, ctl_delete; /* epoll changes made (for tests) */
    unsigned long long read_wakeups[2]; /* wake-ups that read a device, a server (for tests) */
    size_t buffered; /* bytes held, waiting to be taken */
    struct epoll_event *events;
    int events_size;
    int64_t now; /* monotonic ns, read once per wake-up */
} Relays;

static int64_t monotonic_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

static int again(int error) { return error == EAGAIN || error == EWOULDBLOCK || error == EINTR; }

/* ------------------------------------------------------------------ one relay's life */

static void free_waiting(Relays *self, Side *side) {
    if (side->waiting != NULL) {
        self->buffered -= side->waiting_length - side->waiting_sent;
        PyMem_RawFree(side->waiting);
        side->waiting = NULL;
    }
}

/* Close both sockets (which takes them out of the epoll), drop what waits, leave the live
   relays. The relay itself and its token are kept for the caller. */
static void shut(Relays *self, Relay *relay, int error) {
    if (relay->ended)
        return;
    relay->ended = 1;
    relay->error = error;
    if (relay->dialling) {
        relay->dialling = 0;
        self->dialling--;
    }
    for (int i = 0; i < 2; i++) {
        Side *side = &relay->side[i];
        if (side->fd >= 0) {
            if ((size_t)side->fd < self->by_fd_size && self->by_fd[side->fd] == relay)
                self->by_fd[side->fd] = NULL;
            close(side->fd); /* Linux frees the descriptor even when close reports EINTR */
            side->fd = -1;
        }
        free_waiting(self, side);
    }
    if (relay->previous != NULL)
        relay->previous->next = relay->next;
    else
        self->live = relay->next;
    if (relay->next != NULL)
        relay->next->previous = relay->previous;
    relay->previous = relay->next = NULL;
    self->count--;
}

/* A relay ended by what happened on its sockets: its token is handed back by the wait. */
static void end(Relays *self, Relay *relay, int error) {
    if (relay->ended)
        return;
    shut(self, relay, error);
    if (self->ended_last != NULL)
        self->ended_last->next = relay;
    else
        self->ended_first = relay;
    self->ended_last = relay;
}

/* The relay's token, its memory freed (after shut). */
static PyObject *release(Relay *relay) {
    PyObject *token = relay->token;
    PyMem_RawFree(relay);
    return token;
}

/* The epoll watches `side` for what it now waits for: one change at most. */
static int sync_side(Relays *self, Relay *relay, int index) {
    Side *side = &relay->side[index];
    uint32_t wanted = (side->reading ? READABLE : 0) |
                      (side->waiting != NULL || (relay->dialling && index == SERVER) ? WRITABLE : 0);
    if (wanted == side->registered)
        return 0;
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = wanted;
    event.data.fd = side->fd;
    int operation;
    if (side->registered == 0) {
        operation = EPOLL_CTL_ADD;
        self->ctl_add++;
    } else if (wanted == 0) {
        operation = EPOLL_CTL_DEL;
        self->ctl_delete++;
    } else {
        operation = EPOLL_CTL_MOD;
        self->ctl_modify++;
    }
    if (epoll_ctl(self->epoll_fd, operation, side->fd, &event) != 0) {
        end(self, relay, errno);
        return -1;
    }
    side->registered = wanted;
    return 0;
}

static int both_done(const Relay *relay) {
    return relay->side[DEVICE].finished && relay->side[SERVER].finished && relay->side[DEVICE].waiting == NULL &&
           relay->side[SERVER].waiting == NULL;
}

/* The other side has said all it will: half-close towards `target`, or end the relay if
   `target` has finished too and everything is delivered. */
static void pass_fin(Relays *self, Relay *relay, int target) {
    if (both_done(relay)) {
        end(self, relay, 0);
        return;
    }
    if (shutdown(relay->side[target].fd, SHUT_WR) != 0)
        end(self, relay, errno);
}

/* Keep what `target` did not take of `data`; `source` is not read until it has gone. */
static void keep(Relays *self, Relay *relay, int source, int target, const char *data, size_t length) {
    Side *side = &relay->side[target];
    side->waiting = PyMem_RawMalloc(length);
    if (side->waiting == NULL) {
        end(self, relay, ENOMEM);
        return;
    }
    memcpy(side->waiting, data, length);
    side->waiting_length = length;
    side->waiting_sent = 0;
    self->buffered += length;
    relay->side[source].reading = 0;
    if (sync_side(self, relay, source) == 0)
        sync_side(self, relay, target);
}

/* `source` is readable: read what it holds and send it on, to its FIN if its peer has closed. */
static void read_side(Relays *self, Relay *relay, int source, int peer_closed) {
    int target = 1 - source;
    relay->side[source].read_wakeups++;
    self->read_wakeups[source]++;
    for (;;) {
        ssize_t got = recv(relay->side[source].fd, read_buffer, READ_SIZE, MSG_DONTWAIT);
        if (got < 0) {
            if (!again(errno))
                end(self, relay, errno);
            return;
        }
        relay->last_active = self->now;
        if (got == 0)
            break;
        ssize_t sent = send(relay->side[target].fd, read_buffer, (size_t)got, SEND_FLAGS);
        if (sent < 0) {
            if (!again(errno)) {
                end(self, relay, errno);
                return;
            }
            sent = 0;
        }
        if (sent < got) {
            keep(self, relay, source, target, read_buffer + sent, (size_t)(got - sent));
            return;
        }
        if (!peer_closed)
            return;
        /* The peer has said all it will: the rest of it and its FIN are in, so they are taken
           now rather than on a wake-up of their own (a device sends its last bytes and closes
           at once). */
    }
    relay->side[source].finished = 1;
    if (both_done(relay)) {
        /* The second FIN, everything delivered: closing the sockets takes them out of the
           epoll (no change to stop reading this one first). */
        end(self, relay, 0);
        return;
    }
    relay->side[source].reading = 0;
    if (sync_side(self, relay, source) != 0)
        return;
    if (relay->side[target].waiting == NULL)
        pass_fin(self, relay, target);
}

/* `target` is writable and has bytes waiting: send them; once all have gone, read its source
   again (or pass on the source's FIN). */
static void drain(Relays *self, Relay *relay, int target) {
    Side *side = &relay->side[target];
    int source = 1 - target;
    size_t left = side->waiting_length - side->waiting_sent;
    ssize_t sent = send(side->fd, side->waiting + side->waiting_sent, left, SEND_FLAGS);
    if (sent < 0) {
        if (!again(errno))
            end(self, relay, errno);
        return;
    }
    side->waiting_sent += (size_t)sent;
    self->buffered -= (size_t)sent;
    if ((size_t)sent < left)
        return;
    free_waiting(self, side);
    if (sync_side(self, relay, target) != 0)
        return;
    relay->last_active = self->now;
    if (relay->side[source].finished) {
        pass_fin(self, relay, target);
    } else {
        relay->side[source].reading = 1;
        sync_side(self, relay, source);
    }
}

/* The server's socket is writable: connected, or the connection failed, which the first send
   reports (ECONNREFUSED and the like). */
static void connected(Relays *self, Relay *relay) {
    Side *server = &relay->side[SERVER];
    relay->dialling = 0;
    self->dialling--;
    ssize_t sent = send(server->fd, server->waiting, server->waiting_length, SEND_FLAGS);
    if (sent < 0) {
        if (!again(errno)) {
            end(self, relay, errno);
            return;
        }
        sent = 0;
    }
    self->spliced++;
    server->waiting_sent = (size_t)sent;
    self->buffered -= (size_t)sent;
    server->reading = 1;
    if ((size_t)sent < server->waiting_length) { /* the rest waits, and the device is not read until it has gone */
        sync_side(self, relay, SERVER);
        return;
    }
    free_waiting(self, server);
    if (sync_side(self, relay, SERVER) != 0)
        return;
    relay->side[DEVICE].reading = 1;
    sync_side(self, relay, DEVICE);
}

/* One ready socket of a relay, as the event loop's selector reports it to both sides: an error
   or hang-up wakes its reader and its writer. */
static void handle(Relays *self, Relay *relay, int fd, uint32_t events) {
    int index = relay->side[DEVICE].fd == fd ? DEVICE : SERVER;
    Side *side = &relay->side[index];
    if ((events & ~(uint32_t)WRITABLE) && side->reading)
        read_side(self, relay, index, (events & PEER_CLOSED) != 0);
    if (relay->ended || !(events & ~(uint32_t)READABLE))
        return;
    if (index == SERVER && relay->dialling)
        connected(self, relay);
    else if (side->waiting != NULL)
        drain(self, relay, index);
}

/* ------------------------------------------------------------------ the Python type */

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

static int make_room(Relays *self, int fd) {
    if ((size_t)fd < self->by_fd_size)
        return 0;
    size_t size = self->by_fd_size ? self->by_fd_size : 256;
    while (size <= (size_t)fd)
        size *= 2;
    Relay **grown = PyMem_RawRealloc(self->by_fd, size * sizeof *grown);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(grown + self->by_fd_size, 0, (size - self->by_fd_size) * sizeof *grown);
    self->by_fd = grown;
    self->by_fd_size = size;
    return 0;
}

static PyObject *relays_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    int epoll_fd;
    static char *keywords[] = {"epoll_fd", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "i", keywords, &epoll_fd))
        return NULL;
    if (epoll_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return NULL;
    }
    if (read_buffer == NULL) {
        read_buffer = PyMem_RawMalloc(READ_SIZE);
        if (read_buffer == NULL)
            return PyErr_NoMemory();
    }
    Relays *self = (Relays *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->epoll_fd = epoll_fd;
    return (PyObject *)self;
}

/* Every relay closed and forgotten, its token released (dealloc, close_all's failure). */
static void drop_all(Relays *self) {
    while (self->live != NULL) {
        Relay *relay = self->live;
        shut(self, relay, 0);
        Py_DECREF(release(relay));
    }
    while (self->ended_first != NULL) {
        Relay *relay = self->ended_first;
        self->ended_first = relay->next;
        Py_DECREF(release(relay));
    }
    self->ended_last = NULL;
}

static void relays_dealloc(Relays *self) {
    drop_all(self);
    PyMem_RawFree(self->by_fd);
    PyMem_RawFree(self->events);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *relays_add(Relays *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "add(device_fd, server_fd, hello, token)");
        return NULL;
    }
    int device_fd = descriptor(args[0]);
    int server_fd = device_fd < 0 ? -1 : descriptor(args[1]);
    if (server_fd < 0)
        return NULL;
    char *hello;
    Py_ssize_t hello_length;
    if (PyBytes_AsStringAndSize(args[2], &hello, &hello_length) != 0)
        goto refuse;
    if (hello_length == 0) {
        PyErr_SetString(PyExc_ValueError, "no ClientHello to send");
        goto refuse;
    }
    if (device_fd == server_fd || make_room(self, device_fd > server_fd ? device_fd : server_fd) != 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "one descriptor for both sides");
        goto refuse;
    }
    if ((self->by_fd[device_fd] != NULL && !self->by_fd[device_fd]->ended) ||
        (self->by_fd[server_fd] != NULL && !self->by_fd[server_fd]->ended)) {
        PyErr_SetString(PyExc_ValueError, "a descriptor of a live relay");
        goto refuse;
    }
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = WRITABLE; /* the server's socket, for its connect */
    event.data.fd = server_fd;
    if (epoll_ctl(self->epoll_fd, EPOLL_CTL_ADD, server_fd, &event) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto refuse;
    }
    self->ctl_add++;
    Relay *relay = PyMem_RawCalloc(1, sizeof *relay);
    char *waiting = relay == NULL ? NULL : PyMem_RawMalloc((size_t)hello_length);
    if (waiting == NULL) {
        PyMem_RawFree(relay);
        PyErr_NoMemory();
        goto refuse; /* (closing the server's socket takes it out of the epoll) */
    }
    memcpy(waiting, hello, (size_t)hello_length);
    relay->side[DEVICE].fd = device_fd;
    relay->side[SERVER].fd = server_fd;
    relay->side[SERVER].registered = WRITABLE;
    relay->side[SERVER].waiting = waiting;
    relay->side[SERVER].waiting_length = (size_t)hello_length;
    relay->dialling = 1;
    relay->last_active = monotonic_ns();
    relay->token = Py_NewRef(args[3]);
    relay->next = self->live;
    if (self->live != NULL)
        self->live->previous = relay;
    self->live = relay;
    self->count++;
    self->dialling++;
    self->buffered += (size_t)hello_length;
    self->by_fd[device_fd] = relay;
    self->by_fd[server_fd] = relay;
    Py_RETURN_NONE;

refuse:
    close(device_fd);
    close(server_fd);
    return NULL;
}

/* (token, errno) for each relay ended since the last wait, or None; the relays freed. */
static PyObject *take_ended(Relays *self) {
    if (self->ended_first == NULL)
        Py_RETURN_NONE;
    PyObject *ended = PyList_New(0);
    if (ended == NULL)
        return NULL;
    while (self->ended_first != NULL) {
        Relay *relay = self->ended_first;
        PyObject *item = Py_BuildValue("(Oi)", relay->token, relay->error);
        if (item == NULL || PyList_Append(ended, item) != 0) { /* kept for the next wait */
            Py_XDECREF(item);
            Py_DECREF(ended);
            return NULL;
        }
        Py_DECREF(item);
        self->ended_first = relay->next;
        Py_DECREF(release(relay));
    }
    self->ended_last = NULL;
    return ended;
}

static PyObject *relays_wait(Relays *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "wait(timeout_ms, maxevents)");
        return NULL;
    }
    long timeout_ms = PyLong_AsLong(args[0]);
    if (timeout_ms == -1 && PyErr_Occurred())
        return NULL;
    int timeout = timeout_ms < 0 ? -1 : timeout_ms > INT_MAX ? INT_MAX : (int)timeout_ms;
    long wanted = PyLong_AsLong(args[1]);
    if (wanted == -1 && PyErr_Occurred())
        return NULL;
    if (wanted < 1)
        wanted = 1;
    wanted += 2 * (long)self->count;
    if (wanted > MAX_EVENTS)
        wanted = MAX_EVENTS;
    if (wanted > self->events_size) {
        struct epoll_event *grown = PyMem_RawRealloc(self->events, (size_t)wanted * sizeof *grown);
        if (grown == NULL)
            return PyErr_NoMemory();
        self->events = grown;
        self->events_size = (int)wanted;
    }
    /* Wake-ups that concern the relays alone are handled here without returning: the loop
       (and its Python) runs only when it has something to do, or its timeout has passed. */
    int64_t deadline = timeout > 0 ? monotonic_ns() + (int64_t)timeout * 1000000 : 0;
    int others = 0; /* the other descriptors' events, moved to the front of the array */
    for (;;) {
        int ready;
        if (timeout == 0) {
            ready = epoll_wait(self->epoll_fd, self->events, (int)wanted, 0);
        } else {
            Py_BEGIN_ALLOW_THREADS
            ready = epoll_wait(self->epoll_fd, self->events, (int)wanted, timeout);
            Py_END_ALLOW_THREADS
        }
        if (ready < 0) {
            if (errno != EINTR)
                return PyErr_SetFromErrno(PyExc_OSError);
            if (PyErr_CheckSignals() != 0)
                return NULL;
            break; /* a signal: the loop runs (its handler may have scheduled something) */
        }
        self->now = monotonic_ns();
        for (int i = 0; i < ready; i++) {
            int fd = self->events[i].data.fd;
            Relay *relay = fd >= 0 && (size_t)fd < self->by_fd_size ? self->by_fd[fd] : NULL;
            if (relay != NULL && !relay->ended)
                handle(self, relay, fd, self->events[i].events);
            else
                self->events[others++] = self->events[i];
        }
        if (others > 0 || self->ended_first != NULL || timeout == 0 || ready == 0)
            break;
        if (timeout > 0) {
            int64_t left = deadline - self->now;
            if (left <= 0)
                break;
            timeout = (int)((left + 999999) / 1000000); /* at least what is left, as the loop asked */
        }
    }
    PyObject *other_list = PyList_New(others);
    if (other_list == NULL)
        return NULL;
    for (int i = 0; i < others; i++) {
        PyObject *pair = Py_BuildValue("(iI)", self->events[i].data.fd, (unsigned int)self->events[i].events);
        if (pair == NULL) {
            Py_DECREF(other_list);
            return NULL;
        }
        PyList_SET_ITEM(other_list, i, pair);
    }
    PyObject *ended = take_ended(self);
    if (ended == NULL) {
        Py_DECREF(other_list);
        return NULL;
    }
    PyObject *result = PyTuple_Pack(2, other_list, ended);
    Py_DECREF(other_list);
    Py_DECREF(ended);
    return result;
}

/* The tokens of the live relays that `matches`, each relay closed and forgotten. */
static PyObject *close_matching(Relays *self, int (*matches)(const Relay *, int64_t), int64_t limit) {
    PyObject *closed = PyList_New(0);
    if (closed == NULL)
        return NULL;
    Relay *relay = self->live;
    while (relay != NULL) {
        Relay *next = relay->next;
        if (matches(relay, limit)) {
            if (PyList_Append(closed, relay->token) != 0) {
                Py_DECREF(closed);
                return NULL;
            }
            shut(self, relay, 0);
            Py_DECREF(release(relay));
        }
        relay = next;
    }
    return closed;
}

static int quiet_since(const Relay *relay, int64_t limit) { return relay->last_active < limit; }
static int dialled_before(const Relay *relay, int64_t limit) { return relay->dialling && relay->last_active <= limit; }
static int any_relay(const Relay *relay, int64_t limit) { return 1; }

static int64_t seconds_ago(PyObject *value, int *failed) {
    double seconds = PyFloat_AsDouble(value);
    *failed = seconds == -1.0 && PyErr_Occurred();
    return monotonic_ns() - (int64_t)(seconds * 1e9);
}

static PyObject *relays_close_idle(Relays *self, PyObject *value) {
    int failed;
    int64_t limit = seconds_ago(value, &failed);
    return failed ? NULL : close_matching(self, quiet_since, limit);
}

static PyObject *relays_close_overdue_dials(Relays *self, PyObject *value) {
    int failed;
    int64_t limit = seconds_ago(value, &failed);
    return failed ? NULL : close_matching(self, dialled_before, limit);
}

static PyObject *relays_close_all(Relays *self, PyObject *unused) { return close_matching(self, any_relay, 0); }

/* The live relay whose device is `value` and whose token is `token`, or NULL (no exception). */
static Relay *find(Relays *self, PyObject *value, PyObject *token, int *failed) {
    *failed = 0;
    long fd = PyLong_AsLong(value);
    if (fd == -1 && PyErr_Occurred()) {
        *failed = 1;
        return NULL;
    }
    if (fd < 0 || (size_t)fd >= self->by_fd_size)
        return NULL;
    Relay *relay = self->by_fd[fd];
    if (relay == NULL || relay->ended || relay->side[DEVICE].fd != fd || relay->token != token)
        return NULL;
    return relay;
}

static PyObject *relays_close(Relays *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "close(device_fd, token)");
        return NULL;
    }
    int failed;
    Relay *relay = find(self, args[0], args[1], &failed);
    if (failed)
        return NULL;
    if (relay == NULL)
        Py_RETURN_FALSE;
    shut(self, relay, 0);
    Py_DECREF(release(relay));
    Py_RETURN_TRUE;
}

static PyObject *relays_state(Relays *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "state(device_fd, token)");
        return NULL;
    }
    int failed;
    Relay *relay = find(self, args[0], args[1], &failed);
    if (failed)
        return NULL;
    if (relay == NULL)
        Py_RETURN_NONE;
    const Side *device = &relay->side[DEVICE], *server = &relay->side[SERVER];
    return Py_BuildValue(
        "{s:i,s:i,s:n,s:n,s:k,s:k,s:i,s:i,s:i,s:i,s:I,s:I}", "server_fd", server->fd, "dialling", relay->dialling,
        "waiting_for_device", (Py_ssize_t)(device->waiting ? device->waiting_length - device->waiting_sent : 0),
        "waiting_for_server", (Py_ssize_t)(server->waiting ? server->waiting_length - server->waiting_sent : 0),
        "device_reads", device->read_wakeups, "server_reads", server->read_wakeups, "device_finished",
        device->finished, "server_finished", server->finished, "device_read", device->reading, "server_read",
        server->reading, "device_events", device->registered, "server_events", server->registered);
}

static Py_ssize_t relays_length(Relays *self) { return self->count; }

static PyObject *get_spliced(Relays *self, void *unused) { return PyLong_FromUnsignedLongLong(self->spliced); }
static PyObject *get_dialling(Relays *self, void *unused) { return PyLong_FromSsize_t(self->dialling); }
static PyObject *get_buffered(Relays *self, void *unused) { return PyLong_FromSize_t(self->buffered); }
static PyObject *get_epoll_changes(Relays *self, void *unused) {
    return Py_BuildValue("(KKK)", self->ctl_add, self->ctl_modify, self->ctl_delete);
}

static PyObject *get_read_wakeups(Relays *self, void *unused) {
    return Py_BuildValue("(KK)", self->read_wakeups[DEVICE], self->read_wakeups[SERVER]);
}

static PyGetSetDef relays_getset[] = {
    {"spliced", (getter)get_spliced, NULL, "relays whose ClientHello was sent to the server", NULL},
    {"dialling", (getter)get_dialling, NULL, "relays whose server has not answered yet", NULL},
    {"buffered", (getter)get_buffered, NULL, "bytes held, waiting to be taken", NULL},
    {"read_wakeups", (getter)get_read_wakeups, NULL, "(device, server) wake-ups that read a socket", NULL},
    {"epoll_changes", (getter)get_epoll_changes, NULL, "(adds, modifies, deletes) made to the epoll", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef relays_methods[] = {
    {"add", (PyCFunction)(void (*)(void))relays_add, METH_FASTCALL,
     "add(device_fd, server_fd, hello, token): a relay, its server dialled"},
    {"wait", (PyCFunction)(void (*)(void))relays_wait, METH_FASTCALL,
     "wait(timeout_ms, maxevents) -> ([(fd, events)], [(token, errno)] | None)"},
    {"close", (PyCFunction)(void (*)(void))relays_close, METH_FASTCALL, "close(device_fd, token) -> bool"},
    {"close_idle", (PyCFunction)relays_close_idle, METH_O, "close_idle(seconds) -> [token]"},
    {"close_overdue_dials", (PyCFunction)relays_close_overdue_dials, METH_O, "close_overdue_dials(seconds) -> [token]"},
    {"close_all", (PyCFunction)relays_close_all, METH_NOARGS, "close_all() -> [token]"},
    {"state", (PyCFunction)(void (*)(void))relays_state, METH_FASTCALL, "state(device_fd, token) -> dict | None"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods relays_sequence = {
    .sq_length = (lenfunc)relays_length,
};

static PyTypeObject RelaysType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schoolgate.proxy._relay.Relays",
    .tp_basicsize = sizeof(Relays),
    .tp_dealloc = (destructor)relays_dealloc,
    .tp_as_sequence = &relays_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Relays(epoll_fd): passed-through connections, their bytes copied in C, in the epoll epoll_fd.",
    .tp_methods = relays_methods,
    .tp_getset = relays_getset,
    .tp_new = relays_new,
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT,
    "schoolgate.proxy._relay",
    "Passed-through connections, their bytes copied in C.",
    -1,
    NULL,
};

PyMODINIT_FUNC PyInit__relay(void) {
    if (PyType_Ready(&RelaysType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&relay_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddObjectRef(module, "Relays", (PyObject *)&RelaysType) < 0 ||
        PyModule_AddIntConstant(module, "READ_SIZE", READ_SIZE) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
