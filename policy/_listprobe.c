/* The list store's keys and lookups, compiled: the one hasher and the one prober of schoolgate.

A list store (schoolgate.policy.liststore) files each listed name under xxh3_64(name, seed).
Both sides go through this file: the compile side hashes names with `key`, and the policy asks
about a host with `Prober.probe`, which walks the host's label suffixes, hashes each once per
seed and bisects each store's bucket, in one call. The algorithm is Debian's libxxhash header
inlined (XXH_INLINE_ALL), so the compile side and the probe cannot drift apart, and no library
is loaded at run time.

Every buffer is checked once, when a Prober is made (item sizes, the bucket index's length,
the URL bitmap's length), and every read is bounded by the buffer's length again in the probe,
so a damaged store answers "not listed" rather than reading outside its mapping. Values are read
with memcpy, which is a plain load where the machine allows unaligned reads and correct where it
does not.
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <stdint.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

/* A host name is at most 127 labels in DNS; a proxy's host may have more. The suffixes of a
   host of up to this many labels are kept on the stack, a longer one's on the heap. */
#define MAX_LABELS 256

static inline uint64_t load_u64(const unsigned char *base, Py_ssize_t i) {
    uint64_t v;
    memcpy(&v, base + 8 * i, 8);
    return v;
}

static inline uint32_t load_u32(const unsigned char *base, Py_ssize_t i) {
    uint32_t v;
    memcpy(&v, base + 4 * i, 4);
    return v;
}

static inline unsigned load_class(const unsigned char *base, Py_ssize_t i, Py_ssize_t width) {
    if (width == 1)
        return base[i];
    uint16_t v;
    memcpy(&v, base + 2 * i, 2);
    return v;
}

/* The host's UTF-8 bytes ("replace" for lone surrogates, as str.encode("utf-8", "replace")).
   Returns a new reference to a bytes object when it had to encode, else NULL with *data set
   from the str's cached UTF-8. On failure returns NULL with an exception set and *data NULL. */
static PyObject *host_bytes(PyObject *host, const char **data, Py_ssize_t *size) {
    *data = PyUnicode_AsUTF8AndSize(host, size);
    if (*data != NULL)
        return NULL;
    if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
        return NULL;
    PyErr_Clear();
    PyObject *encoded = PyUnicode_AsEncodedString(host, "utf-8", "replace");
    if (encoded == NULL)
        return NULL;
    *data = PyBytes_AS_STRING(encoded);
    *size = PyBytes_GET_SIZE(encoded);
    return encoded;
}

/* -- key(name: bytes, seed: int) -> int ------------------------------------------------------ */

static PyObject *listprobe_key(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "key(name, seed) takes two arguments");
        return NULL;
    }
    unsigned long long seed = PyLong_AsUnsignedLongLong(args[1]);
    if (seed == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Py_buffer name;
    if (PyObject_GetBuffer(args[0], &name, PyBUF_SIMPLE) < 0)
        return NULL;
    uint64_t value = XXH3_64bits_withSeed(name.buf, (size_t)name.len, (XXH64_hash_t)seed);
    PyBuffer_Release(&name);
    return PyLong_FromUnsignedLongLong(value);
}

/* -- one store's arrays ------------------------------------------------------------------------ */

typedef struct {
    uint64_t seed;
    int bits;                 /* the bucket is the key's top `bits` bits (0: one bucket) */
    Py_buffer index;          /* u32[2**bits + 1] */
    Py_buffer keys;           /* u64[n], sorted */
    Py_buffer classes;        /* u8 or u16[n] */
    Py_ssize_t key_count;
    Py_ssize_t class_width;
    int has_urls;
    Py_buffer url_keys;       /* u64[u], sorted */
    Py_buffer url_bitmap;     /* bit (key >> url_shift) set for each URL host key */
    int url_bits;
    PyObject *as_parent;      /* per class: (categories, lists) as a parent domain of the host */
    PyObject *as_host;        /* per class: (categories, lists) as the host itself */
} Store;

static int get_array(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_ND | PyBUF_FORMAT) < 0)
        return -1;
    if (view->ndim != 1 || view->itemsize != itemsize) {
        PyErr_Format(PyExc_ValueError, "%s: a one-dimensional array of %zd-byte items is needed", what, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static void store_release(Store *store) {
    if (store->index.obj) PyBuffer_Release(&store->index);
    if (store->keys.obj) PyBuffer_Release(&store->keys);
    if (store->classes.obj) PyBuffer_Release(&store->classes);
    if (store->url_keys.obj) PyBuffer_Release(&store->url_keys);
    if (store->url_bitmap.obj) PyBuffer_Release(&store->url_bitmap);
    Py_CLEAR(store->as_parent);
    Py_CLEAR(store->as_host);
}

/* (index, keys, classes, shift) as ListStore.arrays() gives them */
static int store_arrays(Store *store, PyObject *index, PyObject *keys, PyObject *classes, PyObject *shift_obj) {
    long shift = PyLong_AsLong(shift_obj);
    if (shift == -1 && PyErr_Occurred())
        return -1;
    if (shift < 24 || shift > 64) {
        PyErr_Format(PyExc_ValueError, "a bucket shift of %ld: a store has 0 to 40 bucket bits", shift);
        return -1;
    }
    store->bits = (int)(64 - shift);
    if (get_array(index, &store->index, 4, "the bucket index") < 0
        || get_array(keys, &store->keys, 8, "the keys") < 0)
        return -1;
    if (PyObject_GetBuffer(classes, &store->classes, PyBUF_ND | PyBUF_FORMAT) < 0)
        return -1;
    if (store->classes.ndim != 1 || (store->classes.itemsize != 1 && store->classes.itemsize != 2)) {
        PyErr_SetString(PyExc_ValueError, "the classes: an array of 1- or 2-byte items is needed");
        return -1;
    }
    store->key_count = store->keys.shape[0];
    store->class_width = store->classes.itemsize;
    if (store->classes.shape[0] != store->key_count) {
        PyErr_SetString(PyExc_ValueError, "the classes and the keys differ in length");
        return -1;
    }
    if (store->index.shape[0] != ((Py_ssize_t)1 << store->bits) + 1) {
        PyErr_SetString(PyExc_ValueError, "the bucket index does not have 2**bits + 1 entries");
        return -1;
    }
    return 0;
}

/* The class of `key` in the store, or -1. Bounds come from the buffers, not only the index. */
static inline long store_find(const Store *store, uint64_t key) {
    const unsigned char *index = store->index.buf;
    const unsigned char *keys = store->keys.buf;
    Py_ssize_t bucket = store->bits ? (Py_ssize_t)(key >> (64 - store->bits)) : 0;
    Py_ssize_t lo = load_u32(index, bucket), hi = load_u32(index, bucket + 1);
    if (hi > store->key_count)
        hi = store->key_count;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        uint64_t here = load_u64(keys, mid);
        if (here < key)
            lo = mid + 1;
        else if (here > key)
            hi = mid;
        else
            return (long)load_class(store->classes.buf, mid, store->class_width);
    }
    return -1;
}

static inline int store_has_url_host(const Store *store, uint64_t key) {
    uint64_t top = key >> (64 - store->url_bits);
    if ((Py_ssize_t)(top >> 3) >= store->url_bitmap.len)
        return 0;
    if (!((((const unsigned char *)store->url_bitmap.buf)[top >> 3] >> (top & 7)) & 1))
        return 0;
    const unsigned char *keys = store->url_keys.buf;
    Py_ssize_t lo = 0, hi = store->url_keys.shape[0];
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (load_u64(keys, mid) < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < store->url_keys.shape[0] && load_u64(keys, lo) == key;
}

/* -- find(index, keys, classes, shift, key) -> int --------------------------------------------- */

static PyObject *listprobe_find(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "find(index, keys, classes, shift, key) takes five arguments");
        return NULL;
    }
    unsigned long long key = PyLong_AsUnsignedLongLong(args[4]);
    if (key == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    Store store;
    memset(&store, 0, sizeof store);
    long found = -1;
    if (store_arrays(&store, args[0], args[1], args[2], args[3]) == 0)
        found = store_find(&store, key);
    store_release(&store);
    if (PyErr_Occurred())
        return NULL;
    return PyLong_FromLong(found);
}

/* -- Prober ------------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    Py_ssize_t count;
    Store *stores;            /* grouped by seed: a host's suffixes are hashed once per seed */
    int has_catalogue;
    Store catalogue;          /* the names the policy's catalogue knows, keyed as a store */
} ProberObject;

static void prober_dealloc(ProberObject *self) {
    if (self->stores) {
        for (Py_ssize_t i = 0; i < self->count; i++)
            store_release(&self->stores[i]);
        PyMem_Free(self->stores);
    }
    store_release(&self->catalogue);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int class_table(PyObject *table, PyObject **slot, const char *what) {
    if (!PyTuple_Check(table)) {
        PyErr_Format(PyExc_TypeError, "%s: a tuple of (categories, lists) per class is needed", what);
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(table); i++) {
        PyObject *pair = PyTuple_GET_ITEM(table, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyLong_Check(PyTuple_GET_ITEM(pair, 0))
            || !PyLong_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_Format(PyExc_TypeError, "%s: each class is a pair of ints (categories, lists)", what);
            return -1;
        }
    }
    Py_INCREF(table);
    *slot = table;
    return 0;
}

static int store_from_tuple(Store *store, PyObject *item) {
    /* (seed, index, keys, classes, shift, url_keys | None, url_shift, url_bitmap | None,
        bits as a parent, bits as the host) */
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 10) {
        PyErr_SetString(PyExc_TypeError,
                        "a store is (seed, index, keys, classes, shift, url_keys, url_shift, url_bitmap, "
                        "as_parent, as_host)");
        return -1;
    }
    store->seed = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(item, 0));
    if (store->seed == (uint64_t)-1 && PyErr_Occurred())
        return -1;
    if (store_arrays(store, PyTuple_GET_ITEM(item, 1), PyTuple_GET_ITEM(item, 2), PyTuple_GET_ITEM(item, 3),
                     PyTuple_GET_ITEM(item, 4)) < 0)
        return -1;
    if (class_table(PyTuple_GET_ITEM(item, 8), &store->as_parent, "as_parent") < 0
        || class_table(PyTuple_GET_ITEM(item, 9), &store->as_host, "as_host") < 0)
        return -1;
    if (PyTuple_GET_SIZE(store->as_parent) != PyTuple_GET_SIZE(store->as_host)) {
        PyErr_SetString(PyExc_ValueError, "as_parent and as_host differ in length");
        return -1;
    }
    PyObject *url_keys = PyTuple_GET_ITEM(item, 5), *url_bitmap = PyTuple_GET_ITEM(item, 7);
    if (url_keys == Py_None)
        return 0;
    long url_shift = PyLong_AsLong(PyTuple_GET_ITEM(item, 6));
    if (url_shift == -1 && PyErr_Occurred())
        return -1;
    if (url_shift < 40 || url_shift > 61) {
        PyErr_Format(PyExc_ValueError, "a URL filter shift of %ld: the filter has 3 to 24 bits", url_shift);
        return -1;
    }
    store->url_bits = (int)(64 - url_shift);
    if (get_array(url_keys, &store->url_keys, 8, "the URL keys") < 0)
        return -1;
    if (PyObject_GetBuffer(url_bitmap, &store->url_bitmap, PyBUF_SIMPLE) < 0)
        return -1;
    if (store->url_bitmap.len != ((Py_ssize_t)1 << store->url_bits) / 8) {
        PyErr_SetString(PyExc_ValueError, "the URL filter's bitmap does not have 2**bits bits");
        return -1;
    }
    store->has_urls = 1;
    return 0;
}

static PyObject *prober_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *stores_arg, *catalogue = Py_None;
    static char *names[] = {"stores", "catalogue", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:Prober", names, &stores_arg, &catalogue))
        return NULL;
    PyObject *stores = PySequence_Tuple(stores_arg);
    if (stores == NULL)
        return NULL;
    ProberObject *self = (ProberObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        Py_DECREF(stores);
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(stores);
    self->stores = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Store));
    if (self->stores == NULL) {
        Py_DECREF(stores);
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        self->count = i + 1;  /* what dealloc releases */
        if (store_from_tuple(&self->stores[i], PyTuple_GET_ITEM(stores, i)) < 0) {
            Py_DECREF(stores);
            Py_DECREF(self);
            return NULL;
        }
    }
    Py_DECREF(stores);
    if (catalogue != Py_None) {
        /* (seed, index, keys, classes, shift) */
        if (!PyTuple_Check(catalogue) || PyTuple_GET_SIZE(catalogue) != 5) {
            PyErr_SetString(PyExc_TypeError, "the catalogue is (seed, index, keys, classes, shift)");
            Py_DECREF(self);
            return NULL;
        }
        self->catalogue.seed = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(catalogue, 0));
        if ((self->catalogue.seed == (uint64_t)-1 && PyErr_Occurred())
            || store_arrays(&self->catalogue, PyTuple_GET_ITEM(catalogue, 1), PyTuple_GET_ITEM(catalogue, 2),
                            PyTuple_GET_ITEM(catalogue, 3), PyTuple_GET_ITEM(catalogue, 4)) < 0) {
            Py_DECREF(self);
            return NULL;
        }
        self->has_catalogue = 1;
    }
    return (PyObject *)self;
}

static inline void hash_suffixes(uint64_t *keys, const char *data, Py_ssize_t size, const Py_ssize_t *starts,
                                 int count, uint64_t seed) {
    for (int p = 0; p < count; p++)
        keys[p] = XXH3_64bits_withSeed(data + starts[p], (size_t)(size - starts[p]), seed);
}

/* probe(host) -> (lists, categories, listed domain | None, url_entries, catalogued).

   The host's label suffixes are taken as schoolgate.policy.domains.suffixes walks them. For
   each store, each suffix but the last (a top-level domain alone is never a list entry, unless
   it is the whole host) is looked up; a hit's class gives the policy's (categories, lists) as
   a parent domain, or as the host itself for the whole host (exact entries too), and a hit with
   list bits adds them. The listed domain is the longest suffix that added list bits.
   url_entries: a store holds `host/path` entries under one of the suffixes looked up.
   catalogued: the suffixes (of all of them, the last too; longest first) that may be names the
   catalogue knows, as str: empty when none may be. A 64-bit key says so, so a false "may" costs
   the caller its exact check of that suffix, never a wrong answer. The caller looks up only
   these, rather than making and hashing every suffix of a name it has not seen. */
static PyObject *prober_probe(ProberObject *self, PyObject *host) {
    if (!PyUnicode_Check(host)) {
        PyErr_Format(PyExc_TypeError, "probe() needs a str host, not %.100s", Py_TYPE(host)->tp_name);
        return NULL;
    }
    const char *data;
    Py_ssize_t size;
    PyObject *encoded = host_bytes(host, &data, &size);
    if (data == NULL)
        return NULL;
    /* byte offsets of the suffixes, and the same in characters (UTF-8 continuation bytes are
       never a dot, so the walk is the str's walk) */
    int count = 1;
    for (Py_ssize_t i = 0; i < size; i++)
        count += data[i] == '.';
    Py_ssize_t stack_starts[MAX_LABELS], stack_chars[MAX_LABELS];
    uint64_t stack_keys[MAX_LABELS];
    unsigned char stack_known[MAX_LABELS];
    Py_ssize_t *starts = stack_starts, *chars = stack_chars;
    uint64_t *keys = stack_keys;
    unsigned char *known = stack_known;  /* which suffixes may be catalogue names */
    void *heap = NULL;
    if (count > MAX_LABELS) {  /* no real name; a hostile proxy host may be */
        heap = PyMem_Malloc((size_t)count * (2 * sizeof(Py_ssize_t) + sizeof(uint64_t) + 1));
        if (heap == NULL) {
            Py_XDECREF(encoded);
            return PyErr_NoMemory();
        }
        starts = heap;
        chars = starts + count;
        keys = (uint64_t *)(chars + count);
        known = (unsigned char *)(keys + count);
    }
    starts[0] = 0;
    chars[0] = 0;
    int label = 1;
    Py_ssize_t characters = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char)data[i];
        if ((c & 0xC0) != 0x80)
            characters++;
        if (c == '.') {
            starts[label] = i + 1;
            chars[label] = characters;
            label++;
        }
    }
    int probed = count > 1 ? count - 1 : 1;
    PyObject *lists = NULL, *categories = NULL, *catalogued = NULL, *result = NULL;
    Py_ssize_t first = -1;
    int url_entries = 0, candidates = 0;
    uint64_t hashed_seed = 0;
    int hashed = 0;  /* how many of the suffixes `keys` holds for hashed_seed */
    if (self->has_catalogue) {
        hash_suffixes(keys, data, size, starts, count, self->catalogue.seed);
        hashed = count;
        hashed_seed = self->catalogue.seed;
        for (int p = 0; p < count; p++) {
            known[p] = store_find(&self->catalogue, keys[p]) >= 0;
            candidates += known[p];
        }
    }
    catalogued = PyTuple_New(candidates);
    if (catalogued == NULL)
        goto done;
    for (int p = 0, made = 0; made < candidates; p++) {
        if (!known[p])
            continue;
        PyObject *name = p ? PyUnicode_Substring(host, chars[p], PyUnicode_GET_LENGTH(host)) : Py_NewRef(host);
        if (name == NULL)
            goto done;
        PyTuple_SET_ITEM(catalogued, made++, name);
    }
    lists = PyLong_FromLong(0);
    categories = PyLong_FromLong(0);
    if (lists == NULL || categories == NULL)
        goto done;
    for (Py_ssize_t s = 0; s < self->count; s++) {
        const Store *store = &self->stores[s];
        if (!hashed || store->seed != hashed_seed) {
            hash_suffixes(keys, data, size, starts, probed, store->seed);
            hashed = probed;
            hashed_seed = store->seed;
        }
        for (int p = 0; p < probed; p++) {
            if (store->has_urls && !url_entries)
                url_entries = store_has_url_host(store, keys[p]);
            long klass = store_find(store, keys[p]);
            if (klass < 0)
                continue;
            PyObject *table = p ? store->as_parent : store->as_host;
            if (klass >= PyTuple_GET_SIZE(table)) {
                PyErr_SetString(PyExc_ValueError, "damaged list store: a key names a class that does not exist");
                goto done;
            }
            PyObject *pair = PyTuple_GET_ITEM(table, klass);
            PyObject *its_lists = PyTuple_GET_ITEM(pair, 1);
            int listed = PyObject_IsTrue(its_lists);
            if (listed < 0)
                goto done;
            if (!listed)
                continue;
            PyObject *more = PyNumber_Or(lists, its_lists);
            if (more == NULL)
                goto done;
            Py_SETREF(lists, more);
            more = PyNumber_Or(categories, PyTuple_GET_ITEM(pair, 0));
            if (more == NULL)
                goto done;
            Py_SETREF(categories, more);
            if (first < 0 || chars[p] < first)
                first = chars[p];
        }
    }
    PyObject *domain;
    if (first < 0) {
        domain = Py_NewRef(Py_None);
    } else if (first == 0) {
        domain = Py_NewRef(host);
    } else {
        domain = PyUnicode_Substring(host, first, PyUnicode_GET_LENGTH(host));
        if (domain == NULL)
            goto done;
    }
    result = PyTuple_New(5);
    if (result == NULL) {
        Py_DECREF(domain);
        goto done;
    }
    PyTuple_SET_ITEM(result, 0, Py_NewRef(lists));
    PyTuple_SET_ITEM(result, 1, Py_NewRef(categories));
    PyTuple_SET_ITEM(result, 2, domain);
    PyTuple_SET_ITEM(result, 3, PyBool_FromLong(url_entries));
    PyTuple_SET_ITEM(result, 4, Py_NewRef(catalogued));
done:
    Py_XDECREF(catalogued);
    Py_XDECREF(lists);
    Py_XDECREF(categories);
    Py_XDECREF(encoded);
    PyMem_Free(heap);
    return result;
}

static PyMethodDef prober_methods[] = {
    {"probe", (PyCFunction)prober_probe, METH_O,
     "probe(host) -> (lists, categories, listed domain | None, url_entries, catalogued suffixes)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ProberType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "schoolgate.policy._listprobe.Prober",
    .tp_doc = "Prober(stores, catalogue=None): the list stores of a policy, asked together about a host.",
    .tp_basicsize = sizeof(ProberObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = prober_new,
    .tp_dealloc = (destructor)prober_dealloc,
    .tp_methods = prober_methods,
};

static PyMethodDef module_methods[] = {
    {"key", (PyCFunction)(void (*)(void))listprobe_key, METH_FASTCALL, "key(name: bytes, seed: int) -> int: xxh3_64"},
    {"find", (PyCFunction)(void (*)(void))listprobe_find, METH_FASTCALL,
     "find(index, keys, classes, shift, key) -> int: the key's class, or -1"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef listprobe_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "schoolgate.policy._listprobe",
    .m_doc = "The list store's hash and probe (see policy/_listprobe.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__listprobe(void) {
    if (PyType_Ready(&ProberType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&listprobe_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&ProberType);
    if (PyModule_AddObject(module, "Prober", (PyObject *)&ProberType) < 0) {
        Py_DECREF(&ProberType);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "XXH_VERSION_NUMBER", XXH_VERSION_NUMBER) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
