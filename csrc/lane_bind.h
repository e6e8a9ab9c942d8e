// The per-call fast lane of a fused feed-forward step (Python: rlmodule_fast/fastpath/lane.py).
// Included by bindings.cpp inside its anonymous namespace, after PyPolicy and PyQNet.
//
// Why: at B=1 the fused step computes in ~2 us while the Python path around it (spec checks,
// backend choice, plan lookup, freshness, RNG and thread sync, three frames of dispatch) costs
// ~6 us more. A lane is armed by that Python path after a step it ran on a plain batch; the next
// call tries the lane first. The lane re-reads every input of the Python path's decisions -- the
// batch's form, RLMODULE_FAST_BACKEND, the layer-structure generation, the weights stamp, torch's
// initial seed, the thread count, the module class's version tag -- and answers None (the Python
// path runs, and re-arms)
// whenever any differs from what it was armed with. It decides nothing itself: it is a cache of
// "nothing changed since the Python path last ran", so both paths give the same outputs and the
// same random stream, and every error is raised by the Python path.

// The observations of a batch a lane takes: exactly {"obs": x}, x a C-contiguous, aligned float32
// ndarray [B >= 1, obs_dim] or a torch.Tensor (exact type) whose .numpy() is one (CPU, no grad).
// None for anything else (the Python path takes it, converting or raising).
py::object lane_obs(py::handle batch, int obs_dim, PyObject* tensor_type) {
    static PyObject* s_obs = PyUnicode_InternFromString("obs");
    static PyObject* s_numpy = PyUnicode_InternFromString("numpy");
    PyObject* b = batch.ptr();
    if (!PyDict_CheckExact(b) || PyDict_GET_SIZE(b) != 1) return py::none();
    PyObject* found = PyDict_GetItemWithError(b, s_obs);  // borrowed
    if (!found) { PyErr_Clear(); return py::none(); }
    // owned: .numpy() may run Python code (a TorchFunctionMode) that replaces batch["obs"]
    py::object obs_ref = py::reinterpret_borrow<py::object>(found);
    PyObject* obs = obs_ref.ptr();
    py::object arr;
    if (Py_TYPE(obs) == reinterpret_cast<PyTypeObject*>(tensor_type)) {
        PyObject* a = PyObject_CallMethodNoArgs(obs, s_numpy);  // raises for CUDA / grad / conj: Python path
        if (!a) { PyErr_Clear(); return py::none(); }
        arr = py::reinterpret_steal<py::object>(a);
    } else {
        arr = py::reinterpret_borrow<py::object>(obs);
    }
    if (Py_TYPE(arr.ptr()) != py::detail::npy_api::get().PyArray_Type_) return py::none();  // exact ndarray
    auto x = py::reinterpret_borrow<py::array>(arr);
    if (x.ndim() != 2 || x.shape(0) < 1 || x.shape(1) != obs_dim || !(x.flags() & py::array::c_style) ||
        !(x.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) || !is_f32(x))
        return py::none();
    return arr;
}

// CPython's version tag of a class: it changes (0, then a new number never used before) whenever
// an attribute of the class or of a class in its MRO is set or deleted, so one compare tells
// whether a method the Python path would call was patched since arming. 0: no tag (never fresh).
unsigned int type_version(PyTypeObject* t) {
#if PY_VERSION_HEX >= 0x030C0000
    if (!PyUnstable_Type_AssignVersionTag(t)) return 0;
    return t->tp_version_tag;
#else
    static PyObject* s_name = PyUnicode_InternFromString("forward_exploration");
    if (!PyErr_Occurred()) (void)_PyType_Lookup(t, s_name);  // assigns a tag when the class has none
    return (t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) ? t->tp_version_tag : 0;
#endif
}

struct PyLane {
    // the packed step: exactly one of policy / qnet
    py::object net_obj;
    PyPolicy* policy = nullptr;
    PyQNet* qnet = nullptr;
    int obs_dim = 0;
    // the Python path's inputs, as armed
    py::tuple params;                // the parameters the plan packed (weights_stamp over them)
    uint64_t stamp = 0;              // their stamp when packed
    py::list gen_cell;               // layers._STRUCTURE_GEN: [generation]
    py::object gen;                  // its value when armed
    py::dict env_data;               // os.environ._data
    py::object env_key;              // RLMODULE_FAST_BACKEND, encoded
    py::object env_value;            // its raw value when armed (None: unset)
    py::object initial_seed;         // torch.default_generator.initial_seed
    py::list keyed_from;             // ops.cpp._keyed_from: [seed the C++ stream was keyed from]
    py::object torch_threads;        // torch.get_num_threads, or None when RLMODULE_FAST_NUM_THREADS fixed it
    long long env_threads = 0;       // that fixed count (0: follow torch_threads)
    py::list threads_seen;           // ops.cpp._threads_seen: [count _C runs with]
    int max_threads = 1;
    py::object cls;                  // the module's class, whose forward methods the lane stands in for
    unsigned int cls_tag = 0;        // its version tag when they were checked (fastpath.lane.eligible)
    // outputs
    py::object from_numpy;           // torch.from_numpy
    py::object tensor_type;          // torch.Tensor (exact type only: subclasses go the Python way)
    py::tuple out_keys;              // the three output columns, in the step's (dist, actions, logp) order
    bool armed = false;

    // Whether the module's class and every class in its MRO are as they were when the lane was
    // built (a patched forward method would run on the Python path).
    bool class_fresh() const {
        return cls_tag != 0 && !cls.is_none() && reinterpret_cast<PyTypeObject*>(cls.ptr())->tp_version_tag == cls_tag;
    }

    // One arming, owned: arm() from another thread may replace the members (and free the old
    // values) while fresh() runs Python code (a TorchFunctionMode sees data_ptr / _version).
    struct Armed {
        py::tuple params;
        uint64_t stamp;
        py::object gen, env_value;
    };

    // The step's outputs as a fresh dict of torch tensors, or None to run the Python path.
    py::object call(py::handle batch, bool det, double eps) {
        if (!armed || !class_fresh()) return py::none();
        py::object arr = lane_obs(batch, obs_dim, tensor_type.ptr());
        if (arr.is_none()) return py::none();
        const bool draws = !det && (policy || eps > 0.0);  // the Python path keys the stream only then
        if (!armed || !fresh(draws, Armed{params, stamp, gen, env_value})) return py::none();
        auto x = py::reinterpret_borrow<py::array>(arr);
        py::tuple r;
        if (policy) r = policy->step(arr, int(x.shape(0)), 0, no_state(), det, false, py::none(), py::none(), 0);
        else r = qnet->step(x, py::none(), eps, det);
        PyObject* d = PyDict_New();
        if (!d) throw py::error_already_set();
        py::object out = py::reinterpret_steal<py::object>(d);
        for (int i = 0; i < 3; ++i) {
            PyObject* t = PyObject_CallOneArg(from_numpy.ptr(), r[i].ptr());
            if (!t) throw py::error_already_set();
            const int rc = PyDict_SetItem(d, out_keys[i].ptr(), t);
            Py_DECREF(t);
            if (rc) throw py::error_already_set();
        }
        return out;
    }

  private:
    static const py::tuple& no_state() {
        // leaked on purpose: a static py::object would be released after the interpreter is gone
        static const py::tuple* t = new py::tuple(py::make_tuple(py::none(), py::none(), py::none(), py::none()));
        return *t;
    }

    static bool equal(PyObject* a, PyObject* b) {
        if (a == b) return true;
        const int eq = PyObject_RichCompareBool(a, b, Py_EQ);
        if (eq < 0) { PyErr_Clear(); return false; }
        return eq == 1;
    }

    // Whether everything the Python path would read is as it was when this lane was armed.
    bool fresh(bool draws, const Armed& a) {
        PyObject* env = PyDict_GetItemWithError(env_data.ptr(), env_key.ptr());
        if (!env && PyErr_Occurred()) { PyErr_Clear(); return false; }
        if (!equal(env ? env : Py_None, a.env_value.ptr())) return false;
        if (!equal(PyList_GET_ITEM(gen_cell.ptr(), 0), a.gen.ptr())) return false;
        if (draws) {
            PyObject* seed = PyObject_CallNoArgs(initial_seed.ptr());
            if (!seed) { PyErr_Clear(); return false; }
            const bool same = equal(seed, PyList_GET_ITEM(keyed_from.ptr(), 0));
            Py_DECREF(seed);
            if (!same) return false;
        }
        // the count sync_threads would apply (a forked child's pool starts at one thread: the
        // Python path applies it again there, also when RLMODULE_FAST_NUM_THREADS fixed it)
        long long v = env_threads;
        if (!torch_threads.is_none()) {
            PyObject* n = PyObject_CallNoArgs(torch_threads.ptr());
            if (!n) { PyErr_Clear(); return false; }
            v = PyLong_AsLongLong(n);
            Py_DECREF(n);
            if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); return false; }
            if (v > max_threads) v = max_threads;
        }
        if (v != PyLong_AsLongLong(PyList_GET_ITEM(threads_seen.ptr(), 0))) { PyErr_Clear(); return false; }
        return weights_stamp_of(a.params) == a.stamp;
    }

  public:
    // Garbage-collector support: the parameters (and the class) may refer back to the module
    // whose __dict__ holds this lane; without it such a cycle is never freed.
    template <typename F>
    void visit_refs(F&& f) {
        for (const py::handle& h : std::initializer_list<py::handle>{
                 net_obj, params, gen_cell, gen, env_data, env_key, env_value, initial_seed, keyed_from, torch_threads,
                 threads_seen, from_numpy, tensor_type, out_keys, cls})
            f(h.ptr());
    }
    void clear_refs() {  // what a cycle can run through; disarmed, so call() reads nothing else
        armed = false;
        params = py::tuple();
        cls = py::none();
    }
};

int lane_traverse(PyObject* self, visitproc visit, void* arg) {
#if PY_VERSION_HEX >= 0x03090000
    Py_VISIT(Py_TYPE(self));
#endif
    if (!py::detail::is_holder_constructed(self)) return 0;
    auto& l = py::cast<PyLane&>(py::handle(self));
    int rc = 0;
    l.visit_refs([&](PyObject* o) { if (!rc && o) rc = visit(o, arg); });
    return rc;
}

int lane_clear(PyObject* self) {
    if (py::detail::is_holder_constructed(self)) py::cast<PyLane&>(py::handle(self)).clear_refs();
    return 0;
}

void bind_lane(py::module_& m) {
    py::class_<PyLane>(m, "Lane", py::custom_type_setup([](PyHeapTypeObject* heap_type) {
        auto* type = &heap_type->ht_type;
        type->tp_flags |= Py_TPFLAGS_HAVE_GC;
        type->tp_traverse = lane_traverse;
        type->tp_clear = lane_clear;
    }))
        // What stays for the net's life; arm() sets what the freshness check compares.
        .def(py::init([](py::object net, int obs_dim, py::list gen_cell, py::dict env_data, py::object env_key,
                         py::object initial_seed, py::list keyed_from, py::object torch_threads, long long env_threads,
                         py::list threads_seen, int max_threads, py::object from_numpy, py::object tensor_type,
                         py::tuple out_keys, py::type cls, unsigned int cls_tag) {
                 auto l = std::make_unique<PyLane>();
                 if (py::isinstance<PyPolicy>(net)) l->policy = net.cast<PyPolicy*>();
                 else if (py::isinstance<PyQNet>(net)) l->qnet = net.cast<PyQNet*>();
                 else throw py::value_error("Lane: net: expected a _C.Policy or _C.QNet");
                 RF_CHECK(out_keys.size() == 3, "Lane: out_keys: expected 3 column names");
                 RF_CHECK(gen_cell.size() == 1 && keyed_from.size() == 1 && threads_seen.size() == 1,
                          "Lane: gen_cell / keyed_from / threads_seen: expected one-element lists");
                 check_dim("Lane", "obs_dim", obs_dim);
                 l->net_obj = net; l->obs_dim = obs_dim;
                 l->gen_cell = gen_cell; l->env_data = env_data; l->env_key = env_key;
                 l->initial_seed = initial_seed; l->keyed_from = keyed_from;
                 l->torch_threads = torch_threads; l->env_threads = env_threads;
                 l->threads_seen = threads_seen; l->max_threads = max_threads;
                 l->from_numpy = from_numpy; l->tensor_type = tensor_type;
                 l->out_keys = out_keys;
                 l->cls = cls; l->cls_tag = cls_tag;
                 l->params = py::tuple();
                 l->gen = py::none(); l->env_value = py::none();
                 l->armed = false;
                 return l;
             }))
        .def("arm", [](PyLane& l, py::handle batch, py::tuple params, uint64_t stamp, py::object gen,
                       py::object env_value) {
                 if (lane_obs(batch, l.obs_dim, l.tensor_type.ptr()).is_none()) return false;
                 l.params = params; l.stamp = stamp; l.gen = gen; l.env_value = env_value; l.armed = true;
                 return true;
             }, "When the lane takes this batch's form: compare against these from now on (the packed "
                "parameters and their stamp, the structure generation and RLMODULE_FAST_BACKEND's raw value "
                "the Python path ran with) and return True; else change nothing and return False.")
        .def_property_readonly("net", [](PyLane& l) { return l.net_obj; })
        .def_readonly("armed", &PyLane::armed)
        .def_property_readonly("class_fresh", &PyLane::class_fresh,
                               "Whether the module's class (and every class in its MRO) is unchanged since the lane "
                               "was built (its version tag); False: the lane answers no call, build another.")
        .def("__call__", &PyLane::call, py::arg("batch"), py::arg("det"), py::arg("eps") = 0.0,
             "The step's output dict for a batch {'obs': float32 [B, obs_dim]} (numpy or CPU tensor), or None "
             "when the Python path must run (another batch form, or anything changed since arming).");
    m.def("lane_takes", [](py::handle batch, int obs_dim, py::handle tensor_type) {
        return !lane_obs(batch, obs_dim, tensor_type.ptr()).is_none();
    }, py::arg("batch"), py::arg("obs_dim"), py::arg("tensor_type"), "Whether a Lane takes this batch's form.");
    m.def("type_version", [](py::type cls) { return type_version(reinterpret_cast<PyTypeObject*>(cls.ptr())); },
          py::arg("cls"), "CPython's version tag of a class (changes whenever it or a base is modified; 0: none).");
}
