/*
 * plugins/python.c - consumers written in Python, run in the worker by an
 * embedded CPython (consumers-python(3)).
 *
 * A pool names a function in its "plugin_options"; every consume call
 * calls it as consumers.Pool does, fn(items, *args, **kwargs), with items
 * an iterator over cns_next() whose values are converted from jansson to
 * Python objects here, in C (no json.loads per item).  "complete" is the
 * completion handler, "setup" runs once per worker at init and what it
 * returns reaches the functions as a keyword argument (setup_as, default
 * "state") when they accept one.  A Python exception becomes the call's
 * error (type, message, the last frames); SystemExit, like os._exit, ends
 * the worker, which the pool's on_crash then handles.
 *
 * The built-in module "consumersd" gives the Python code the stream's
 * params, the pool's name, the worker's slot, and put(pool, item), which
 * streams into another pool through libconsumers; those streams end when
 * the call that opened them returns.
 *
 * The interpreter is Debian's libpython, with its home set from the
 * build's pkg-config (not from the environment, which the worker clears),
 * isolated from PYTHON* variables and user site-packages.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <consumers/client.h>
#include <consumers/plugin.h>

#ifndef CNS_PYTHON_HOME
#define CNS_PYTHON_HOME "/usr"
#endif

/* Deeper results are refused rather than recursed into. */
#define PY_MAX_DEPTH	512
/* Frames of a traceback given in an error. */
#define PY_FRAMES	3

struct chain {
	char		*pool;
	cns_stream	*st;
};

static struct {
	int		 started;
	PyObject	*fn, *complete, *setup, *state;
	PyObject	*setup_as;		/* str: the state's keyword */
	int		 fn_state, complete_state; /* they take it */
	PyObject	*helpers;		/* _accepts, _error */
	char		*pool;
	unsigned	 worker;
	const cns_ctx	*ctx;			/* inside a call, for the module */
	struct chain	*chain;			/* streams put() opened */
	size_t		 nchain;
} py;

/* Written in Python where Python says it best: a signature's keywords and
 * an exception's text. */
static const char py_helpers_src[] =
"import inspect, traceback\n"
"def _accepts(fn, name):\n"
"    try:\n"
"        sig = inspect.signature(fn)\n"
"    except (TypeError, ValueError):\n"
"        return False\n"
"    for p in sig.parameters.values():\n"
"        if p.kind == p.VAR_KEYWORD:\n"
"            return True\n"
"        if p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD,\n"
"                                         p.KEYWORD_ONLY):\n"
"            return True\n"
"    return False\n"
"def _error(e, frames):\n"
"    if isinstance(e, SyntaxError) and e.filename:\n"
"        return '%s:%s: %s: %s' % (e.filename, e.lineno,\n"
"                                  type(e).__name__, e.msg)\n"
"    text = ''.join(traceback.format_exception_only(type(e), e)).strip()\n"
"    tb = traceback.extract_tb(e.__traceback__)[-frames:]\n"
"    if tb:\n"
"        text += ' (at %s)' % '; '.join('%s:%s in %s' % (\n"
"            f.filename, f.lineno, f.name) for f in tb)\n"
"    return text\n";

/* ---- JSON <-> Python ---- */

static PyObject *
py_from_json(json_t *v)
{
	PyObject *o, *e;
	const char *k;
	json_t *jv;
	size_t i;

	switch (json_typeof(v)) {
	case JSON_OBJECT:
		if ((o = PyDict_New()) == NULL)
			return NULL;
		json_object_foreach(v, k, jv) {
			if ((e = py_from_json(jv)) == NULL ||
			    PyDict_SetItemString(o, k, e) == -1) {
				Py_XDECREF(e);
				Py_DECREF(o);
				return NULL;
			}
			Py_DECREF(e);
		}
		return o;
	case JSON_ARRAY:
		if ((o = PyList_New((Py_ssize_t)json_array_size(v))) == NULL)
			return NULL;
		json_array_foreach(v, i, jv) {
			if ((e = py_from_json(jv)) == NULL) {
				Py_DECREF(o);
				return NULL;
			}
			PyList_SET_ITEM(o, (Py_ssize_t)i, e);
		}
		return o;
	case JSON_STRING:
		return PyUnicode_FromStringAndSize(json_string_value(v),
		    (Py_ssize_t)json_string_length(v));
	case JSON_INTEGER:
		return PyLong_FromLongLong(json_integer_value(v));
	case JSON_REAL:
		return PyFloat_FromDouble(json_real_value(v));
	case JSON_TRUE:
		Py_RETURN_TRUE;
	case JSON_FALSE:
		Py_RETURN_FALSE;
	default:
		Py_RETURN_NONE;
	}
}

static json_t *json_from_py(PyObject *, int);

static json_t *
json_from_seq(PyObject *o, int depth)
{
	PyObject *fast = PySequence_Fast(o, "not a sequence");
	json_t *a, *e;

	if (fast == NULL)
		return NULL;
	a = json_array();
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(fast); i++) {
		e = json_from_py(PySequence_Fast_GET_ITEM(fast, i), depth + 1);
		if (e == NULL || json_array_append_new(a, e) == -1) {
			Py_DECREF(fast);
			json_decref(a);
			return NULL;
		}
	}
	Py_DECREF(fast);
	return a;
}

static json_t *
json_from_dict(PyObject *o, int depth)
{
	PyObject *k, *v;
	Py_ssize_t pos = 0, klen;
	const char *ks;
	json_t *obj = json_object(), *e;

	while (PyDict_Next(o, &pos, &k, &v)) {
		if (!PyUnicode_Check(k)) {
			PyErr_Format(PyExc_TypeError, "a dict key of type '%s' "
			    "cannot be a JSON object key (keys must be str)",
			    Py_TYPE(k)->tp_name);
			goto bad;
		}
		if ((ks = PyUnicode_AsUTF8AndSize(k, &klen)) == NULL ||
		    (e = json_from_py(v, depth + 1)) == NULL)
			goto bad;
		if (json_object_setn_new(obj, ks, (size_t)klen, e) == -1) {
			PyErr_SetString(PyExc_ValueError, "a dict key JSON "
			    "cannot hold");
			goto bad;
		}
	}
	return obj;
bad:
	json_decref(obj);
	return NULL;
}

/* A new JSON value, or NULL with a Python exception that names what
 * JSON cannot hold. */
static json_t *
json_from_py(PyObject *o, int depth)
{
	const char *s;
	Py_ssize_t len;
	long long n;
	int overflow;
	double d;

	if (depth > PY_MAX_DEPTH) {
		PyErr_Format(PyExc_ValueError, "the value is nested more than "
		    "%d levels deep", PY_MAX_DEPTH);
		return NULL;
	}
	if (o == Py_None)
		return json_null();
	if (PyBool_Check(o))
		return json_boolean(o == Py_True);
	if (PyLong_Check(o)) {
		n = PyLong_AsLongLongAndOverflow(o, &overflow);
		if (overflow != 0) {
			PyErr_SetString(PyExc_OverflowError, "an int outside "
			    "64 bits cannot be a JSON number here");
			return NULL;
		}
		if (n == -1 && PyErr_Occurred())
			return NULL;
		return json_integer(n);
	}
	if (PyFloat_Check(o)) {
		d = PyFloat_AS_DOUBLE(o);
		if (!isfinite(d)) {
			PyErr_Format(PyExc_ValueError, "the float %R is not a "
			    "JSON number", o);
			return NULL;
		}
		return json_real(d);
	}
	if (PyUnicode_Check(o)) {
		if ((s = PyUnicode_AsUTF8AndSize(o, &len)) == NULL)
			return NULL;
		return json_stringn_nocheck(s, (size_t)len);
	}
	if (PyList_Check(o) || PyTuple_Check(o))
		return json_from_seq(o, depth);
	if (PyDict_Check(o))
		return json_from_dict(o, depth);
	PyErr_Format(PyExc_TypeError, "a value of type '%s' cannot be "
	    "converted to JSON", Py_TYPE(o)->tp_name);
	return NULL;
}

/* ---- errors ---- */

/* Report the pending Python exception through cns_fail, with `what` in
 * front.  SystemExit ends the worker here: a death, for on_crash. */
static void
py_fail(const cns_ctx *ctx, const char *what)
{
	PyObject *type, *val, *tb, *text = NULL;
	const char *msg = NULL;

	if (PyErr_ExceptionMatches(PyExc_SystemExit)) {
		PyObject *code = NULL;
		long rc = 1;
		PyErr_Fetch(&type, &val, &tb);
		PyErr_NormalizeException(&type, &val, &tb);
		if (val != NULL)
			code = PyObject_GetAttrString(val, "code");
		if (code == Py_None)
			rc = 0;
		else if (code != NULL && PyLong_Check(code))
			rc = PyLong_AsLong(code) & 0xff;
		fprintf(stderr, "python: SystemExit (exit status %ld) in the "
		    "Python code: the worker exits\n", rc);
		fflush(NULL);
		_exit((int)rc);
	}
	PyErr_Fetch(&type, &val, &tb);
	PyErr_NormalizeException(&type, &val, &tb);
	if (val != NULL && tb != NULL)
		PyException_SetTraceback(val, tb);
	if (val != NULL && py.helpers != NULL) {
		PyObject *f = PyDict_GetItemString(py.helpers, "_error");
		if (f != NULL)
			text = PyObject_CallFunction(f, "Oi", val, PY_FRAMES);
		if (text != NULL)
			msg = PyUnicode_AsUTF8(text);
	}
	if (msg == NULL) {
		PyErr_Clear();
		msg = type != NULL ? ((PyTypeObject *)type)->tp_name :
		    "an unknown error";
	}
	cns_fail(ctx, "%s%s", what, msg);
	Py_XDECREF(text);
	Py_XDECREF(type);
	Py_XDECREF(val);
	Py_XDECREF(tb);
}

/* ---- the items iterator ---- */

typedef struct {
	PyObject_HEAD
	cns_items	*items;		/* NULL once its call returned */
} Items;

static PyObject *
items_next(PyObject *self)
{
	Items *it = (Items *)self;
	json_t *v;

	if (it->items == NULL)
		return NULL;
	if ((v = cns_next(it->items)) == NULL) {
		it->items = NULL;
		return NULL;
	}
	return py_from_json(v);
}

static PyTypeObject ItemsType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "consumersd.Items",
	.tp_basicsize = sizeof(Items),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "The items of one consume call, decoded from JSON.",
	.tp_iter = PyObject_SelfIter,
	.tp_iternext = items_next,
};

/* ---- the consumersd module ---- */

static PyObject *
mod_params(PyObject *self, PyObject *unused)
{
	(void)self;
	(void)unused;
	if (py.ctx == NULL)
		Py_RETURN_NONE;
	return py_from_json(cns_params(py.ctx));
}

static PyObject *
mod_pool(PyObject *self, PyObject *unused)
{
	(void)self;
	(void)unused;
	return PyUnicode_FromString(py.pool != NULL ? py.pool : "");
}

static PyObject *
mod_worker(PyObject *self, PyObject *unused)
{
	(void)self;
	(void)unused;
	return PyLong_FromUnsignedLong(py.worker);
}

static cns_stream *
chain_stream(const char *pool)
{
	struct chain *c;
	char err[512];
	cns_stream *st;

	for (size_t i = 0; i < py.nchain; i++)
		if (strcmp(py.chain[i].pool, pool) == 0)
			return py.chain[i].st;
	if ((st = cns_stream_open(NULL, pool, NULL, 0, err, sizeof err)) ==
	    NULL) {
		PyErr_Format(PyExc_ConnectionError, "consumersd.put: %s", err);
		return NULL;
	}
	c = realloc(py.chain, (py.nchain + 1) * sizeof *py.chain);
	if (c == NULL || (c[py.nchain].pool = strdup(pool)) == NULL) {
		if (c != NULL)
			py.chain = c;
		cns_stream_free(st);
		PyErr_NoMemory();
		return NULL;
	}
	py.chain = c;
	py.chain[py.nchain++].st = st;
	return st;
}

static PyObject *
mod_put(PyObject *self, PyObject *args)
{
	const char *pool;
	PyObject *item;
	cns_stream *st;
	json_t *v;
	int rc;

	(void)self;
	if (!PyArg_ParseTuple(args, "sO:put", &pool, &item))
		return NULL;
	if (py.ctx == NULL) {
		PyErr_SetString(PyExc_RuntimeError, "consumersd.put works "
		    "inside a consume or complete call only");
		return NULL;
	}
	if ((v = json_from_py(item, 0)) == NULL)
		return NULL;
	if ((st = chain_stream(pool)) == NULL) {
		json_decref(v);
		return NULL;
	}
	rc = cns_stream_put(st, v);
	json_decref(v);
	if (rc == -1)
		return PyErr_Format(PyExc_ConnectionError, "consumersd.put to "
		    "pool %s: %s", pool, cns_stream_error(st));
	Py_RETURN_NONE;
}

/* End the streams put() opened during a call; the first failure becomes
 * the call's error. */
static void
chain_close(const cns_ctx *ctx)
{
	char err[512];
	json_t *final;

	for (size_t i = 0; i < py.nchain; i++) {
		final = cns_stream_close(py.chain[i].st, err, sizeof err);
		if (final == NULL || !json_is_true(json_object_get(final, "ok")))
			cns_fail(ctx, "the stream to pool %s: %s",
			    py.chain[i].pool, final == NULL ? err : err[0] ?
			    err : "it failed");
		json_decref(final);
		cns_stream_free(py.chain[i].st);
		free(py.chain[i].pool);
	}
	free(py.chain);
	py.chain = NULL;
	py.nchain = 0;
}

static PyMethodDef mod_methods[] = {
	{ "params", mod_params, METH_NOARGS,
	    "params() -> the stream's params from the client's header." },
	{ "pool", mod_pool, METH_NOARGS, "pool() -> this pool's name." },
	{ "worker", mod_worker, METH_NOARGS,
	    "worker() -> this worker's slot in the pool (1-based)." },
	{ "put", mod_put, METH_VARARGS,
	    "put(pool, item): stream item into another pool; the stream "
	    "ends when this call returns." },
	{ NULL, NULL, 0, NULL }
};

static struct PyModuleDef mod_def = {
	PyModuleDef_HEAD_INIT, "consumersd",
	"The consumersd worker this Python code runs in.", -1, mod_methods,
	NULL, NULL, NULL, NULL
};

static PyObject *
mod_init(void)
{
	PyObject *m;

	if (PyType_Ready(&ItemsType) < 0 ||
	    (m = PyModule_Create(&mod_def)) == NULL)
		return NULL;
	Py_INCREF(&ItemsType);
	if (PyModule_AddObject(m, "Items", (PyObject *)&ItemsType) < 0) {
		Py_DECREF(&ItemsType);
		Py_DECREF(m);
		return NULL;
	}
	return m;
}

/* ---- starting the interpreter, finding the functions ---- */

static const char *
opt_string(const cns_ctx *ctx, const char *key, int *bad)
{
	json_t *v = json_object_get(cns_options(ctx), key);

	if (v == NULL || json_is_null(v))
		return NULL;
	if (!json_is_string(v) || json_string_length(v) == 0) {
		cns_fail(ctx, "python: plugin_options.%s must be a non-empty "
		    "string", key);
		*bad = 1;
		return NULL;
	}
	return json_string_value(v);
}

static int
py_start(const cns_ctx *ctx)
{
	PyPreConfig pre;
	PyConfig c;
	PyStatus st;
	Dl_info info;

	PyPreConfig_InitIsolatedConfig(&pre);
	pre.utf8_mode = 1;
#ifdef __SANITIZE_ADDRESS__
	/* pymalloc's arenas are mmap()ed, which LeakSanitizer does not scan:
	 * with malloc it sees what CPython's objects point to. */
	pre.allocator = PYMEM_ALLOCATOR_MALLOC;
#endif
	st = Py_PreInitialize(&pre);
	if (PyStatus_Exception(st))
		goto fail;
	/* Extension modules (math, _json...) take libpython's symbols from
	 * the global scope; the daemon loaded us RTLD_LOCAL. */
	if (dladdr((void *)Py_InitializeFromConfig, &info) != 0 &&
	    info.dli_fname != NULL)
		(void)dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL |
		    RTLD_NOLOAD);
	if (PyImport_AppendInittab("consumersd", mod_init) == -1) {
		cns_fail(ctx, "python: cannot add the consumersd module");
		return -1;
	}
	PyConfig_InitIsolatedConfig(&c);
	c.buffered_stdio = 0;
	c.install_signal_handlers = 0;
	c.write_bytecode = 0;
	c.parse_argv = 0;
	st = PyConfig_SetBytesString(&c, &c.home, CNS_PYTHON_HOME);
	if (!PyStatus_Exception(st))
		st = PyConfig_SetBytesString(&c, &c.program_name, "consumersd");
	if (!PyStatus_Exception(st))
		st = Py_InitializeFromConfig(&c);
	PyConfig_Clear(&c);
	if (PyStatus_Exception(st))
		goto fail;
	py.started = 1;
	/* Items are made whether or not the code imports consumersd. */
	if (PyType_Ready(&ItemsType) < 0) {
		py_fail(ctx, "python: ");
		return -1;
	}
	return 0;
fail:
	cns_fail(ctx, "python: cannot start the interpreter (home %s): %s%s%s",
	    CNS_PYTHON_HOME, st.func != NULL ? st.func : "",
	    st.func != NULL ? ": " : "", st.err_msg != NULL ? st.err_msg : "");
	return -1;
}

/* Put plugin_options.path in front of sys.path. */
static int
py_path(const cns_ctx *ctx)
{
	json_t *path = json_object_get(cns_options(ctx), "path"), *e;
	PyObject *sys_path = PySys_GetObject("path"), *s;
	size_t i;

	if (path == NULL || json_is_null(path))
		return 0;
	if (json_is_string(path)) {
		e = path;
		path = json_pack("[O]", e);
	} else
		json_incref(path);
	json_array_foreach(path, i, e) {
		if (!json_is_string(e))
			break;
	}
	if (!json_is_array(path) || i < json_array_size(path) ||
	    sys_path == NULL || !PyList_Check(sys_path)) {
		cns_fail(ctx, "python: plugin_options.path must be a directory "
		    "or an array of directories");
		json_decref(path);
		return -1;
	}
	for (i = json_array_size(path); i-- > 0;) {
		s = PyUnicode_FromString(json_string_value(
		    json_array_get(path, i)));
		if (s == NULL || PyList_Insert(sys_path, 0, s) == -1) {
			Py_XDECREF(s);
			json_decref(path);
			py_fail(ctx, "python: plugin_options.path: ");
			return -1;
		}
		Py_DECREF(s);
	}
	json_decref(path);
	return 0;
}

/* "module:name" (name may be dotted) as a callable; NULL after cns_fail. */
static PyObject *
py_resolve(const cns_ctx *ctx, const char *key, const char *spec)
{
	const char *colon = strchr(spec, ':');
	PyObject *mod, *o, *next;
	char *modname, *attrs, *a, *save = NULL;
	char what[300];

	if (colon == NULL || colon == spec || colon[1] == '\0') {
		cns_fail(ctx, "python: plugin_options.%s \"%s\" must be "
		    "\"module:function\"", key, spec);
		return NULL;
	}
	modname = strndup(spec, (size_t)(colon - spec));
	attrs = strdup(colon + 1);
	if (modname == NULL || attrs == NULL) {
		free(modname);
		free(attrs);
		cns_fail(ctx, "python: out of memory");
		return NULL;
	}
	snprintf(what, sizeof what, "python: importing %s for "
	    "plugin_options.%s: ", modname, key);
	o = mod = PyImport_ImportModule(modname);
	if (mod == NULL) {
		if (PyErr_ExceptionMatches(PyExc_ModuleNotFoundError)) {
			PyObject *sp = PySys_GetObject("path"), *r = NULL;
			PyErr_Clear();
			if (sp != NULL)
				r = PyObject_Repr(sp);
			cns_fail(ctx, "python: no module named %s (plugin_options."
			    "%s \"%s\"; sys.path %s)", modname, key, spec,
			    r != NULL ? PyUnicode_AsUTF8(r) : "?");
			Py_XDECREF(r);
			PyErr_Clear();
		} else
			py_fail(ctx, what);
		goto out;
	}
	Py_INCREF(o);
	for (a = strtok_r(attrs, ".", &save); a != NULL;
	    a = strtok_r(NULL, ".", &save)) {
		next = PyObject_GetAttrString(o, a);
		Py_DECREF(o);
		if ((o = next) == NULL) {
			PyObject *f = PyObject_GetAttrString(mod, "__file__");
			PyErr_Clear();
			cns_fail(ctx, "python: %s: module %s has no \"%s\" "
			    "(plugin_options.%s \"%s\")", f != NULL &&
			    PyUnicode_Check(f) ? PyUnicode_AsUTF8(f) : modname,
			    modname, colon + 1, key, spec);
			Py_XDECREF(f);
			PyErr_Clear();
			goto out;
		}
	}
	if (!PyCallable_Check(o)) {
		cns_fail(ctx, "python: plugin_options.%s \"%s\" is a %s, not a "
		    "function", key, spec, Py_TYPE(o)->tp_name);
		Py_CLEAR(o);
	}
out:
	Py_XDECREF(mod);
	free(modname);
	free(attrs);
	return o;
}

static int
py_accepts(PyObject *fn)
{
	PyObject *f = PyDict_GetItemString(py.helpers, "_accepts"), *r;
	int yes;

	if (f == NULL || (r = PyObject_CallFunctionObjArgs(f, fn,
	    py.setup_as, NULL)) == NULL) {
		PyErr_Clear();
		return 0;
	}
	yes = PyObject_IsTrue(r) == 1;
	Py_DECREF(r);
	return yes;
}

/* Start Python and find the functions: for init and for consumersd -t. */
static int
py_load(const cns_ctx *ctx)
{
	const char *fn, *complete, *setup, *setup_as;
	PyObject *r;
	int bad = 0;

	if (!json_is_object(cns_options(ctx))) {
		cns_fail(ctx, "python: the pool needs \"plugin_options\": "
		    "{\"function\": \"module:function\", ...}");
		return -1;
	}
	fn = opt_string(ctx, "function", &bad);
	complete = opt_string(ctx, "complete", &bad);
	setup = opt_string(ctx, "setup", &bad);
	setup_as = opt_string(ctx, "setup_as", &bad);
	if (bad)
		return -1;
	if (fn == NULL) {
		cns_fail(ctx, "python: plugin_options needs \"function\": "
		    "\"module:function\"");
		return -1;
	}
	if ((py.pool = strdup(cns_pool(ctx))) == NULL)
		return -1;
	py.worker = cns_worker(ctx);
	if (py_start(ctx) == -1 || py_path(ctx) == -1)
		return -1;
	py.helpers = PyDict_New();
	if (py.helpers == NULL || PyDict_SetItemString(py.helpers,
	    "__builtins__", PyEval_GetBuiltins()) == -1 ||
	    (r = PyRun_String(py_helpers_src, Py_file_input, py.helpers,
	    py.helpers)) == NULL) {
		py_fail(ctx, "python: ");
		return -1;
	}
	Py_DECREF(r);
	py.setup_as = PyUnicode_FromString(setup_as != NULL ? setup_as :
	    "state");
	if (py.setup_as == NULL ||
	    (py.fn = py_resolve(ctx, "function", fn)) == NULL ||
	    (complete != NULL &&
	    (py.complete = py_resolve(ctx, "complete", complete)) == NULL) ||
	    (setup != NULL &&
	    (py.setup = py_resolve(ctx, "setup", setup)) == NULL))
		return -1;
	if (py.setup != NULL) {
		py.fn_state = py_accepts(py.fn);
		py.complete_state = py.complete != NULL &&
		    py_accepts(py.complete);
	}
	return 0;
}

/* ---- the plugin ---- */

CNS_PLUGIN_EXPORT int consumers_plugin_check(const cns_ctx *);

int
consumers_plugin_check(const cns_ctx *ctx)
{
	return py_load(ctx);
}

static int
py_init(const cns_ctx *ctx, void **state)
{
	(void)state;
	if (py_load(ctx) == -1)
		return -1;
	if (py.setup != NULL) {
		py.ctx = ctx;
		py.state = PyObject_CallNoArgs(py.setup);
		py.ctx = NULL;
		if (py.state == NULL) {
			py_fail(ctx, "python: setup: ");
			return -1;
		}
	}
	return 0;
}

/* fn(first, *args, **kwargs[, setup_as=state]) as JSON; NULL (JSON null)
 * after cns_fail. */
static json_t *
py_call(const cns_ctx *ctx, PyObject *fn, PyObject *first, int with_args,
    int with_state, const char *what)
{
	PyObject *args = NULL, *kw = NULL, *a, *r = NULL;
	json_t *ja = cns_args(ctx), *res = NULL;
	size_t n = with_args ? json_array_size(ja) : 0;

	if ((args = PyTuple_New((Py_ssize_t)n + 1)) == NULL)
		goto fail;
	Py_INCREF(first);
	PyTuple_SET_ITEM(args, 0, first);
	for (size_t i = 0; i < n; i++) {
		if ((a = py_from_json(json_array_get(ja, i))) == NULL)
			goto fail;
		PyTuple_SET_ITEM(args, (Py_ssize_t)i + 1, a);
	}
	if (with_args && json_object_size(cns_kwargs(ctx)) > 0 &&
	    (kw = py_from_json(cns_kwargs(ctx))) == NULL)
		goto fail;
	if (with_state) {
		if (kw == NULL && (kw = PyDict_New()) == NULL)
			goto fail;
		if (PyDict_SetItem(kw, py.setup_as, py.state) == -1)
			goto fail;
	}
	py.ctx = ctx;
	r = PyObject_Call(fn, args, kw);
	py.ctx = NULL;
	if (r == NULL)
		goto fail;
	if ((res = json_from_py(r, 0)) == NULL)
		goto fail;
	goto out;
fail:
	py.ctx = NULL;
	py_fail(ctx, what);
out:
	Py_XDECREF(r);
	Py_XDECREF(args);
	Py_XDECREF(kw);
	return res;
}

static json_t *
py_consume(cns_items *items, const cns_ctx *ctx)
{
	Items *it = PyObject_New(Items, &ItemsType);
	json_t *res;

	if (it == NULL) {
		py_fail(ctx, "python: ");
		return NULL;
	}
	it->items = items;
	res = py_call(ctx, py.fn, (PyObject *)it, 1, py.fn_state, "");
	it->items = NULL;	/* a kept reference ends, harmlessly */
	Py_DECREF(it);
	chain_close(ctx);
	return res;
}

static json_t *
py_complete(json_t *results, const cns_ctx *ctx)
{
	PyObject *r;
	json_t *res;

	if (py.complete == NULL)
		return NULL;
	if ((r = py_from_json(results)) == NULL) {
		py_fail(ctx, "complete: ");
		return NULL;
	}
	res = py_call(ctx, py.complete, r, 0, py.complete_state, "complete: ");
	Py_DECREF(r);
	chain_close(ctx);
	return res;
}

static void
py_fini(void *state)
{
	(void)state;
	if (!py.started)
		return;
	Py_CLEAR(py.fn);
	Py_CLEAR(py.complete);
	Py_CLEAR(py.setup);
	Py_CLEAR(py.state);
	Py_CLEAR(py.setup_as);
	Py_CLEAR(py.helpers);
	/* atexit handlers run, files and connections close. */
	if (Py_FinalizeEx() == -1)
		fprintf(stderr, "pool %s: worker %u: flushing Python's output "
		    "failed at exit\n", py.pool, py.worker);
	free(py.pool);
	py.pool = NULL;
}

CONSUMERS_PLUGIN(.init = py_init, .consume = py_consume,
    .complete = py_complete, .fini = py_fini);
