/* The CPython extension behind the qsdpa package: a thin layer over
 * include/qsdpa.h. Arrays arrive from Python as descriptors
 *   (data pointer: int, dtype: qsdpa_dtype int, shape: tuple, strides: tuple of elements)
 * built by qsdpa/_arrays.py from __array_interface__ (NumPy, MLX through
 * NumPy) or __cuda_array_interface__ (CuPy, PyTorch): no copy is made here,
 * and the Python caller keeps the arrays alive for the duration of the call.
 * Every status other than QSDPA_OK raises with the library's message. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "qsdpa.h"

/* ---- errors ------------------------------------------------------------- */
static PyObject *raise_status(qsdpa_status st) {
    PyObject *type = PyExc_ValueError;
    switch (st) {
    case QSDPA_ERR_OUT_OF_MEMORY: type = PyExc_MemoryError; break;
    case QSDPA_ERR_IO: type = PyExc_OSError; break;
    case QSDPA_ERR_DEVICE: type = PyExc_RuntimeError; break;
    default: break; /* invalid argument, unsupported, overflow, parse: ValueError */
    }
    PyErr_Format(type, "%s [%s]", qsdpa_last_error(), qsdpa_status_string(st));
    return NULL;
}

/* ---- descriptors -------------------------------------------------------- */
static int parse_tensor(PyObject *desc, qsdpa_tensor *t, const char *name) {
    memset(t, 0, sizeof *t);
    PyObject *shape, *strides;
    unsigned long long ptr;
    int dtype;
    if (!PyTuple_Check(desc) || !PyArg_ParseTuple(desc, "KiO!O!", &ptr, &dtype, &PyTuple_Type, &shape, &PyTuple_Type,
                                                  &strides)) {
        PyErr_Format(PyExc_TypeError, "%s: expected a tensor descriptor (ptr, dtype, shape, strides)", name);
        return -1;
    }
    Py_ssize_t rank = PyTuple_GET_SIZE(shape);
    if (rank < 1 || rank > QSDPA_MAX_RANK || PyTuple_GET_SIZE(strides) != rank) {
        PyErr_Format(PyExc_ValueError, "%s: rank %zd is outside [1, %d]", name, rank, QSDPA_MAX_RANK);
        return -1;
    }
    t->data = (void *)(uintptr_t)ptr;
    t->dtype = (qsdpa_dtype)dtype;
    t->rank = (int)rank;
    for (Py_ssize_t d = 0; d < rank; d++) {
        t->shape[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape, d));
        t->stride[d] = PyLong_AsLongLong(PyTuple_GET_ITEM(strides, d));
    }
    return PyErr_Occurred() ? -1 : 0;
}

/* desc or None -> tensor pointer or NULL. */
static int parse_optional(PyObject *desc, qsdpa_tensor *t, const qsdpa_tensor **out, const char *name) {
    *out = NULL;
    if (desc == Py_None) return 0;
    if (parse_tensor(desc, t, name) < 0) return -1;
    *out = t;
    return 0;
}

static int parse_format(const char *text, qsdpa_format *f) {
    qsdpa_status st = qsdpa_format_parse(text, f);
    if (st != QSDPA_OK) {
        raise_status(st);
        return -1;
    }
    return 0;
}

/* (format text, dim, codes, scales|None, biases|None) -> qtensor. */
static int parse_qtensor(PyObject *desc, qsdpa_qtensor *q, const char *name) {
    memset(q, 0, sizeof *q);
    const char *fmt;
    long long dim;
    PyObject *codes, *scales, *biases;
    if (!PyTuple_Check(desc) || !PyArg_ParseTuple(desc, "sLOOO", &fmt, &dim, &codes, &scales, &biases)) {
        PyErr_Format(PyExc_TypeError, "%s: expected (format, dim, codes, scales, biases)", name);
        return -1;
    }
    if (parse_format(fmt, &q->format) < 0 || parse_tensor(codes, &q->codes, name) < 0) return -1;
    q->dim = dim;
    if (scales != Py_None && parse_tensor(scales, &q->scales, name) < 0) return -1;
    if (biases != Py_None && parse_tensor(biases, &q->biases, name) < 0) return -1;
    return 0;
}

static PyObject *tensor_desc(const qsdpa_tensor *t) {
    if (!t->data && t->rank == 0) Py_RETURN_NONE;
    PyObject *shape = PyTuple_New(t->rank), *strides = PyTuple_New(t->rank);
    if (!shape || !strides) {
        Py_XDECREF(shape);
        Py_XDECREF(strides);
        return NULL;
    }
    for (int d = 0; d < t->rank; d++) {
        PyTuple_SET_ITEM(shape, d, PyLong_FromLongLong(t->shape[d]));
        PyTuple_SET_ITEM(strides, d, PyLong_FromLongLong(t->stride[d]));
    }
    return Py_BuildValue("(KiNN)", (unsigned long long)(uintptr_t)t->data, (int)t->dtype, shape, strides);
}

/* ---- context ------------------------------------------------------------ */
static void context_free(PyObject *cap) {
    qsdpa_context_destroy(PyCapsule_GetPointer(cap, "qsdpa.context"));
}

static PyObject *py_context_create(PyObject *self, PyObject *args) {
    int backend, threads, device, disable_simd;
    const char *kernel;
    if (!PyArg_ParseTuple(args, "iiizi", &backend, &threads, &device, &kernel, &disable_simd)) return NULL;
    qsdpa_context_options o = qsdpa_context_default_options();
    o.backend = (qsdpa_backend)backend;
    o.num_threads = threads;
    o.device = device;
    o.kernel = kernel;
    o.disable_simd = disable_simd;
    qsdpa_context *ctx = NULL;
    qsdpa_status st = qsdpa_context_create(&o, &ctx);
    if (st != QSDPA_OK) return raise_status(st);
    return PyCapsule_New(ctx, "qsdpa.context", context_free);
}

static qsdpa_context *get_context(PyObject *cap) {
    return PyCapsule_GetPointer(cap, "qsdpa.context");
}

/* ---- quantize / dequantize ------------------------------------------------ */
static PyObject *py_quantize(PyObject *self, PyObject *args) {
    const char *fmt;
    unsigned long long x, codes, scales, biases;
    int x_dtype, scale_dtype;
    long long rows, dim;
    if (!PyArg_ParseTuple(args, "sKiLLKKKi", &fmt, &x, &x_dtype, &rows, &dim, &codes, &scales, &biases, &scale_dtype))
        return NULL;
    qsdpa_format f;
    if (parse_format(fmt, &f) < 0) return NULL;
    qsdpa_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qsdpa_quantize(&f, (const void *)(uintptr_t)x, (qsdpa_dtype)x_dtype, rows, dim, (uint32_t *)(uintptr_t)codes,
                        (void *)(uintptr_t)scales, (void *)(uintptr_t)biases, (qsdpa_dtype)scale_dtype);
    Py_END_ALLOW_THREADS
    if (st != QSDPA_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *py_dequantize(PyObject *self, PyObject *args) {
    const char *fmt;
    unsigned long long codes, scales, biases, out;
    int scale_dtype, out_dtype;
    long long rows, dim;
    if (!PyArg_ParseTuple(args, "sKKKiLLKi", &fmt, &codes, &scales, &biases, &scale_dtype, &rows, &dim, &out,
                          &out_dtype))
        return NULL;
    qsdpa_format f;
    if (parse_format(fmt, &f) < 0) return NULL;
    qsdpa_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qsdpa_dequantize(&f, (const uint32_t *)(uintptr_t)codes, (const void *)(uintptr_t)scales,
                          (const void *)(uintptr_t)biases, (qsdpa_dtype)scale_dtype, rows, dim,
                          (void *)(uintptr_t)out, (qsdpa_dtype)out_dtype);
    Py_END_ALLOW_THREADS
    if (st != QSDPA_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* (scale, mask|None, causal, window, sinks|None) -> params; mask/sinks tensors
 * are stored in the caller's storage. */
static int parse_params(PyObject *desc, qsdpa_attention_params *p, qsdpa_tensor *mask, qsdpa_tensor *sinks) {
    double scale;
    PyObject *m, *s;
    int causal;
    long long window;
    if (!PyArg_ParseTuple(desc, "dOiLO", &scale, &m, &causal, &window, &s)) return -1;
    *p = qsdpa_attention_default_params();
    p->scale = (float)scale;
    p->causal = causal;
    p->window = window;
    if (parse_optional(m, mask, &p->mask, "mask") < 0 || parse_optional(s, sinks, &p->sinks, "sinks") < 0) return -1;
    return 0;
}

static PyObject *py_attention(PyObject *self, PyObject *args) {
    PyObject *ctxcap, *qd, *kd, *vd, *pd, *od;
    if (!PyArg_ParseTuple(args, "OOOOO!O", &ctxcap, &qd, &kd, &vd, &PyTuple_Type, &pd, &od)) return NULL;
    qsdpa_context *ctx = get_context(ctxcap);
    qsdpa_tensor q, out, mask, sinks;
    qsdpa_qtensor k, v;
    qsdpa_attention_params p;
    if (!ctx || parse_tensor(qd, &q, "q") < 0 || parse_qtensor(kd, &k, "k") < 0 || parse_qtensor(vd, &v, "v") < 0 ||
        parse_params(pd, &p, &mask, &sinks) < 0 || parse_tensor(od, &out, "out") < 0)
        return NULL;
    qsdpa_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qsdpa_attention(ctx, &q, &k, &v, &p, &out);
    Py_END_ALLOW_THREADS
    if (st != QSDPA_OK) return raise_status(st);
    Py_RETURN_NONE;
}

/* ---- cache -------------------------------------------------------------- */
static void cache_free(PyObject *cap) {
    qsdpa_cache_destroy(PyCapsule_GetPointer(cap, "qsdpa.cache"));
}

static qsdpa_cache *get_cache(PyObject *cap) { return PyCapsule_GetPointer(cap, "qsdpa.cache"); }

static PyObject *py_cache_create(PyObject *self, PyObject *args) {
    PyObject *ctxcap;
    long long layers, batch, heads, dk, dv, step, residual;
    const char *kf, *vf;
    int scale_dtype, residual_dtype;
    if (!PyArg_ParseTuple(args, "OLLLLLssiLLi", &ctxcap, &layers, &batch, &heads, &dk, &dv, &kf, &vf, &scale_dtype,
                          &step, &residual, &residual_dtype))
        return NULL;
    qsdpa_context *ctx = get_context(ctxcap);
    if (!ctx) return NULL;
    qsdpa_cache_options o = qsdpa_cache_default_options();
    o.layers = layers;
    o.batch = batch;
    o.heads_kv = heads;
    o.dim_k = dk;
    o.dim_v = dv;
    if (parse_format(kf, &o.k_format) < 0 || parse_format(vf, &o.v_format) < 0) return NULL;
    o.scale_dtype = (qsdpa_dtype)scale_dtype;
    o.step = step;
    o.residual = residual;
    o.residual_dtype = (qsdpa_dtype)residual_dtype;
    qsdpa_cache *c = NULL;
    qsdpa_status st = qsdpa_cache_create(ctx, &o, &c);
    if (st != QSDPA_OK) return raise_status(st);
    return PyCapsule_New(c, "qsdpa.cache", cache_free);
}

static PyObject *py_cache_load(PyObject *self, PyObject *args) {
    PyObject *ctxcap;
    const char *path;
    if (!PyArg_ParseTuple(args, "Os", &ctxcap, &path)) return NULL;
    qsdpa_context *ctx = get_context(ctxcap);
    if (!ctx) return NULL;
    qsdpa_cache *c = NULL;
    qsdpa_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qsdpa_cache_load(ctx, path, &c);
    Py_END_ALLOW_THREADS
    if (st != QSDPA_OK) return raise_status(st);
    return PyCapsule_New(c, "qsdpa.cache", cache_free);
}

static PyObject *py_cache_save(PyObject *self, PyObject *args) {
    PyObject *cap;
    const char *path;
    if (!PyArg_ParseTuple(args, "Os", &cap, &path)) return NULL;
    qsdpa_cache *c = get_cache(cap);
    if (!c) return NULL;
    qsdpa_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qsdpa_cache_save(c, path);
    Py_END_ALLOW_THREADS
    if (st != QSDPA_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *py_cache_options(PyObject *self, PyObject *args) {
    PyObject *cap;
    if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
    qsdpa_cache *c = get_cache(cap);
    if (!c) return NULL;
    qsdpa_cache_options o;
    qsdpa_status st = qsdpa_cache_get_options(c, &o);
    if (st != QSDPA_OK) return raise_status(st);
    char kf[32], vf[32];
    qsdpa_format_string(&o.k_format, kf, sizeof kf);
    qsdpa_format_string(&o.v_format, vf, sizeof vf);
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:s,s:s,s:s,s:L,s:L,s:s}", "layers", (long long)o.layers, "batch",
                         (long long)o.batch, "heads_kv", (long long)o.heads_kv, "dim_k", (long long)o.dim_k, "dim_v",
                         (long long)o.dim_v, "k_format", kf, "v_format", vf, "scale_dtype",
                         qsdpa_dtype_name(o.scale_dtype), "step", (long long)o.step, "residual",
                         (long long)o.residual, "residual_dtype", qsdpa_dtype_name(o.residual_dtype));
}

static PyObject *py_cache_append(PyObject *self, PyObject *args) {
    PyObject *ctxcap, *cap, *kd, *vd;
    long long layer;
    if (!PyArg_ParseTuple(args, "OOLOO", &ctxcap, &cap, &layer, &kd, &vd)) return NULL;
    qsdpa_context *ctx = get_context(ctxcap);
    qsdpa_cache *c = get_cache(cap);
    qsdpa_tensor k, v;
    if (!ctx || !c || parse_tensor(kd, &k, "k") < 0 || parse_tensor(vd, &v, "v") < 0) return NULL;
    qsdpa_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qsdpa_cache_append(ctx, c, layer, &k, &v);
    Py_END_ALLOW_THREADS
    if (st != QSDPA_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *py_cache_attend(PyObject *self, PyObject *args) {
    PyObject *ctxcap, *cap, *qd, *pd, *od;
    long long layer;
    if (!PyArg_ParseTuple(args, "OOLOO!O", &ctxcap, &cap, &layer, &qd, &PyTuple_Type, &pd, &od)) return NULL;
    qsdpa_context *ctx = get_context(ctxcap);
    qsdpa_cache *c = get_cache(cap);
    qsdpa_tensor q, out, mask, sinks;
    qsdpa_attention_params p;
    if (!ctx || !c || parse_tensor(qd, &q, "q") < 0 || parse_params(pd, &p, &mask, &sinks) < 0 ||
        parse_tensor(od, &out, "out") < 0)
        return NULL;
    qsdpa_status st;
    Py_BEGIN_ALLOW_THREADS
    st = qsdpa_cache_attend(ctx, c, layer, &q, &p, &out);
    Py_END_ALLOW_THREADS
    if (st != QSDPA_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *py_cache_trim(PyObject *self, PyObject *args) {
    PyObject *cap;
    long long n;
    if (!PyArg_ParseTuple(args, "OL", &cap, &n)) return NULL;
    qsdpa_cache *c = get_cache(cap);
    if (!c) return NULL;
    qsdpa_status st = qsdpa_cache_trim(c, n);
    if (st != QSDPA_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *py_cache_length(PyObject *self, PyObject *args) {
    PyObject *cap;
    long long layer;
    if (!PyArg_ParseTuple(args, "OL", &cap, &layer)) return NULL;
    qsdpa_cache *c = get_cache(cap);
    if (!c) return NULL;
    int64_t len = 0;
    qsdpa_status st = qsdpa_cache_length(c, layer, &len);
    if (st != QSDPA_OK) return raise_status(st);
    return PyLong_FromLongLong(len);
}

static PyObject *py_cache_memory(PyObject *self, PyObject *args) {
    PyObject *cap;
    if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
    qsdpa_cache *c = get_cache(cap);
    if (!c) return NULL;
    size_t alloc = 0, used = 0;
    qsdpa_status st = qsdpa_cache_memory(c, &alloc, &used);
    if (st != QSDPA_OK) return raise_status(st);
    return Py_BuildValue("(nn)", (Py_ssize_t)alloc, (Py_ssize_t)used);
}

static PyObject *qtensor_desc(const qsdpa_qtensor *t) {
    char f[32];
    qsdpa_format_string(&t->format, f, sizeof f);
    PyObject *codes = tensor_desc(&t->codes);
    PyObject *scales = t->scales.rank ? tensor_desc(&t->scales) : (Py_INCREF(Py_None), Py_None);
    PyObject *biases = t->biases.rank ? tensor_desc(&t->biases) : (Py_INCREF(Py_None), Py_None);
    if (!codes || !scales || !biases) {
        Py_XDECREF(codes);
        Py_XDECREF(scales);
        Py_XDECREF(biases);
        return NULL;
    }
    return Py_BuildValue("(sLNNN)", f, (long long)t->dim, codes, scales, biases);
}

static PyObject *py_cache_view(PyObject *self, PyObject *args) {
    PyObject *cap;
    long long layer;
    int part;
    if (!PyArg_ParseTuple(args, "OLi", &cap, &layer, &part)) return NULL;
    qsdpa_cache *c = get_cache(cap);
    if (!c) return NULL;
    qsdpa_qtensor k, v;
    qsdpa_status st = qsdpa_cache_view(c, layer, (qsdpa_cache_part)part, &k, &v);
    if (st != QSDPA_OK) return raise_status(st);
    return Py_BuildValue("(NN)", qtensor_desc(&k), qtensor_desc(&v));
}

static PyObject *py_version(PyObject *self, PyObject *args) { return PyUnicode_FromString(qsdpa_version()); }

static PyObject *py_context_last_route(PyObject *self, PyObject *args) {
    PyObject *cap;
    if (!PyArg_ParseTuple(args, "O", &cap)) return NULL;
    qsdpa_context *ctx = PyCapsule_GetPointer(cap, "qsdpa.context");
    if (!ctx) return NULL;
    return PyUnicode_FromString(qsdpa_context_last_route(ctx));
}

static PyObject *py_context_set_stream(PyObject *self, PyObject *args) {
    PyObject *cap;
    unsigned long long stream;
    if (!PyArg_ParseTuple(args, "OK", &cap, &stream)) return NULL;
    qsdpa_context *ctx = PyCapsule_GetPointer(cap, "qsdpa.context");
    if (!ctx) return NULL;
    qsdpa_status st = qsdpa_context_set_stream(ctx, (void *)(uintptr_t)stream);
    if (st != QSDPA_OK) return raise_status(st);
    Py_RETURN_NONE;
}

static PyObject *py_backend_available(PyObject *self, PyObject *args) {
    int backend;
    if (!PyArg_ParseTuple(args, "i", &backend)) return NULL;
    return PyBool_FromLong(qsdpa_backend_available((qsdpa_backend)backend));
}

static PyObject *py_format_info(PyObject *self, PyObject *args) {
    const char *text;
    if (!PyArg_ParseTuple(args, "s", &text)) return NULL;
    qsdpa_format f;
    if (parse_format(text, &f) < 0) return NULL;
    char canon[32];
    qsdpa_format_string(&f, canon, sizeof canon);
    return Py_BuildValue("(siiii)", canon, (int)f.mode, f.bits, f.group, qsdpa_format_has_biases(&f));
}

static PyMethodDef methods[] = {
    {"version", py_version, METH_NOARGS, "Version of the linked C library."},
    {"backend_available", py_backend_available, METH_VARARGS, "Is a backend usable here."},
    {"format_info", py_format_info, METH_VARARGS, "(canonical text, mode, bits, group, has_biases)."},
    {"context_create", py_context_create, METH_VARARGS, "New context capsule."},
    {"context_last_route", py_context_last_route, METH_VARARGS, "qsdpa_context_last_route."},
    {"context_set_stream", py_context_set_stream, METH_VARARGS, "qsdpa_context_set_stream (stream as int)."},
    {"quantize", py_quantize, METH_VARARGS, "qsdpa_quantize over raw pointers."},
    {"dequantize", py_dequantize, METH_VARARGS, "qsdpa_dequantize over raw pointers."},
    {"attention", py_attention, METH_VARARGS, "qsdpa_attention over descriptors."},
    {"cache_create", py_cache_create, METH_VARARGS, "qsdpa_cache_create."},
    {"cache_load", py_cache_load, METH_VARARGS, "qsdpa_cache_load."},
    {"cache_save", py_cache_save, METH_VARARGS, "qsdpa_cache_save."},
    {"cache_options", py_cache_options, METH_VARARGS, "qsdpa_cache_get_options as a dict."},
    {"cache_append", py_cache_append, METH_VARARGS, "qsdpa_cache_append."},
    {"cache_attend", py_cache_attend, METH_VARARGS, "qsdpa_cache_attend."},
    {"cache_trim", py_cache_trim, METH_VARARGS, "qsdpa_cache_trim."},
    {"cache_length", py_cache_length, METH_VARARGS, "qsdpa_cache_length."},
    {"cache_memory", py_cache_memory, METH_VARARGS, "(allocated, used) bytes."},
    {"cache_view", py_cache_view, METH_VARARGS, "qtensor descriptors of one part of a layer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_qsdpa", "qsdpa C library binding.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__qsdpa(void) { return PyModule_Create(&module); }
