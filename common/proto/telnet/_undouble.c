/* Optional C speed-up of common.proto.telnet.undouble (the pure-Python version there
 * is the reference and the fallback): Telnet data whose every 0xFF is one half of a
 * doubled pair (IAC IAC), un-doubled in one pass; None if any 0xFF is not (a command,
 * or an IAC that ends the chunk), for the parser's general path to handle. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static PyObject *
undouble(PyObject *module, PyObject *arg)
{
    Py_buffer in;
    if (PyObject_GetBuffer(arg, &in, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *src = (const unsigned char *)in.buf;
    const Py_ssize_t n = in.len;
    const unsigned char *ff = memchr(src, 0xFF, (size_t)n);
    if (ff == NULL) { /* nothing to undo: the same bytes */
        PyBuffer_Release(&in);
        if (PyBytes_CheckExact(arg)) {
            Py_INCREF(arg);
            return arg;
        }
        return PyBytes_FromStringAndSize((const char *)src, n);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL) {
        PyBuffer_Release(&in);
        return NULL;
    }
    unsigned char *dst = (unsigned char *)PyBytes_AS_STRING(out);
    Py_ssize_t pos = 0, len = 0;
    while (ff != NULL) {
        Py_ssize_t i = ff - src;
        if (i + 1 >= n || src[i + 1] != 0xFF) { /* a lone IAC: not plain data */
            PyBuffer_Release(&in);
            Py_DECREF(out);
            Py_RETURN_NONE;
        }
        memcpy(dst + len, src + pos, (size_t)(i + 1 - pos)); /* the run and one 0xFF */
        len += i + 1 - pos;
        pos = i + 2;
        ff = pos < n ? memchr(src + pos, 0xFF, (size_t)(n - pos)) : NULL;
    }
    memcpy(dst + len, src + pos, (size_t)(n - pos));
    len += n - pos;
    PyBuffer_Release(&in);
    if (_PyBytes_Resize(&out, len) < 0)
        return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"undouble", undouble, METH_O,
     "Data with every 0xFF doubled, un-doubled; None if any 0xFF is not doubled."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_undouble", NULL, 0, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__undouble(void)
{
    return PyModuleDef_Init(&module);
}
