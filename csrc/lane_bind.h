// The per-call fast lane of a fused step (Python: rlmodule_fast/fastpath/lane.py): feed-forward
// Policy / QNet steps, and PPO's recurrent (LSTM / GRU) policy step with its state.
// Included by bindings.cpp inside its anonymous namespace, after PyPolicy and PyQNet.
//
// Why: at B=1 the fused step computes in ~2 us while the Python path around it (spec checks,
// backend choice, plan lookup, freshness, RNG and thread sync, three frames of dispatch) costs
// ~6 us more; around a recurrent step (LSTM H=256) it costs ~100 us, as every line that Python
// code touches is a cache miss after the step's 2 MB weight stream. A lane is armed by that Python
// path after a step it ran on a plain batch; the next call tries the lane first. The lane re-reads
// every input of the Python path's decisions -- the batch's form, RLMODULE_FAST_BACKEND, the
// layer-structure generation, the weights stamp, torch's initial seed, the thread count, the module
// class's version tag -- and answers None (the Python path runs, and re-arms) whenever any differs
// from what it was armed with. It decides nothing itself: it is a cache of
// "nothing changed since the Python path last ran", so both paths give the same outputs and the
// same random stream. Errors: a batch the lane does not take goes to the Python path, which raises
// its own; the one error raised inside a lane call is the step's (NaN / inf in obs or state), with
// the step's message and no draw reserved, exactly as the Python path's call of the same step.

// The form of the batches a lane takes, read from the packed net it steps: the observation width
// and, for a recurrent step, the state's layout (PPO's, as fastpath/cpp_plan.py's _states reads
// it): {"h": [B, H]} (GRU) or {"h", "c"} (LSTM); nested {"actor": {...}, "critic": {...}} when the
// critic has its own rnn.
struct LaneForm {
    int obs_dim = 0;
    int Ha = 0, Hc = 0;               // actor / critic rnn hidden size (0: none)
    bool lstm_a = false, lstm_c = false;
    bool recurrent() const { return Ha > 0; }
    bool operator==(const LaneForm& o) const {
        return obs_dim == o.obs_dim && Ha == o.Ha && Hc == o.Hc && lstm_a == o.lstm_a && lstm_c == o.lstm_c;
    }
};

LaneForm lane_form(const PolicyNet& net) {
    LaneForm f;
    f.obs_dim = net.obs_dim;
    if (net.actor_rnn_on) { f.Ha = net.actor_rnn.H; f.lstm_a = net.actor_rnn.kind == RNN_LSTM; }
    if (net.critic_rnn_on) { f.Hc = net.critic_rnn.H; f.lstm_c = net.critic_rnn.kind == RNN_LSTM; }
    return f;
}

// The form of a lane over policy or qnet (exactly one set), as the net is loaded now: a reload
// (new layers after a structure change) may change it.
LaneForm lane_form(PyPolicy* policy, PyQNet* qnet) {
    if (policy) return lane_form(*policy->h.get());
    LaneForm f;
    f.obs_dim = qnet->h.get()->obs_dim;
    return f;
}

// A batch a lane takes, owned: reading it (a tensor's .numpy()) may run Python code (a
// TorchFunctionMode) that rebinds the caller's dicts, which must not free what was read.
struct LaneBatch {
    py::object obs;        // ndarray [B, obs_dim] or [B, 1, obs_dim]
    int B = 0;
    bool with_t = false;   // obs was [B, 1, obs_dim]: the outputs keep that T axis
    py::object state[4];   // ndarrays ha, ca, hc, cc ([B, 1, H] or [B, H]); unset where the net has none
};

// The ndarray behind a batch leaf: x itself when it is an ndarray (exact type), a torch.Tensor's
// (exact type) .numpy() view (CPU, no grad, not conjugated); kept only when it is C-contiguous,
// aligned float32 of rank 2 or 3 with B = shape[0] >= 1 rows and, for rank 3, shape[1] == 1.
// None otherwise (the Python path takes the leaf, converting or raising).
py::object lane_leaf(PyObject* v, PyObject* tensor_type) {
    static PyObject* s_numpy = PyUnicode_InternFromString("numpy");
    py::object arr;
    if (Py_TYPE(v) == reinterpret_cast<PyTypeObject*>(tensor_type)) {
        PyObject* a = PyObject_CallMethodNoArgs(v, s_numpy);  // raises for CUDA / grad / conj: Python path
        if (!a) { PyErr_Clear(); return py::none(); }
        arr = py::reinterpret_steal<py::object>(a);
    } else {
        arr = py::reinterpret_borrow<py::object>(v);
    }
    if (Py_TYPE(arr.ptr()) != py::detail::npy_api::get().PyArray_Type_) return py::none();  // exact ndarray
    auto x = py::reinterpret_borrow<py::array>(arr);
    const auto nd = x.ndim();
    if ((nd != 2 && nd != 3) || x.shape(0) < 1 || x.shape(0) > INT32_MAX || (nd == 3 && x.shape(1) != 1) ||
        !(x.flags() & py::array::c_style) || !(x.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) || !is_f32(x))
        return py::none();
    return arr;
}

// d[key] as an owned reference (null: absent).
py::object lane_get(PyObject* d, PyObject* key) {
    PyObject* v = PyDict_GetItemWithError(d, key);  // borrowed
    if (!v) { PyErr_Clear(); return py::object(); }
    return py::reinterpret_borrow<py::object>(v);
}

// One rnn's state {"h": [B, (1,) H]} (LSTM: and "c"), exactly those keys, into out[0] (and out[1]).
bool lane_state(const py::object& st, int H, bool lstm, int B, PyObject* tensor_type, py::object* out) {
    static PyObject* s_h = PyUnicode_InternFromString("h");
    static PyObject* s_c = PyUnicode_InternFromString("c");
    if (!st || !PyDict_CheckExact(st.ptr()) || PyDict_GET_SIZE(st.ptr()) != (lstm ? 2 : 1)) return false;
    PyObject* keys[2] = {s_h, s_c};
    for (int i = 0; i < (lstm ? 2 : 1); ++i) {
        py::object v = lane_get(st.ptr(), keys[i]);
        if (!v) return false;
        py::object a = lane_leaf(v.ptr(), tensor_type);
        if (a.is_none()) return false;
        auto x = py::reinterpret_borrow<py::array>(a);
        if (x.shape(0) != B || x.shape(x.ndim() - 1) != H) return false;
        out[i] = std::move(a);
    }
    return true;
}

// Whether a lane over a net of form f takes this batch, filling `out` when it does: THE one
// definition of the batches a lane takes (lane_takes, Lane.arm and Lane.__call__ all ask it).
// Feed-forward: exactly {"obs": x}, x [B >= 1, obs_dim]. Recurrent (PPO's stepping batch): exactly
// {"obs": x, "state_in": s}, x [B, obs_dim] or [B, 1, obs_dim], s the form's layout with leaves
// [B, H] or [B, 1, H] (the same B). Every array as lane_leaf keeps it: a C-contiguous, aligned
// float32 ndarray or a CPU tensor (exact type, no grad) whose .numpy() is one. False for anything
// else: the Python path takes it, converting or raising.
bool lane_batch(py::handle batch, const LaneForm& f, PyObject* tensor_type, LaneBatch& out) {
    static PyObject* s_obs = PyUnicode_InternFromString("obs");
    static PyObject* s_state_in = PyUnicode_InternFromString("state_in");
    static PyObject* s_actor = PyUnicode_InternFromString("actor");
    static PyObject* s_critic = PyUnicode_InternFromString("critic");
    PyObject* b = batch.ptr();
    if (f.obs_dim < 1 || (!f.recurrent() && f.Hc) || !PyDict_CheckExact(b) ||
        PyDict_GET_SIZE(b) != (f.recurrent() ? 2 : 1))
        return false;
    py::object obs = lane_get(b, s_obs);
    py::object st = f.recurrent() ? lane_get(b, s_state_in) : py::object();
    if (!obs || (f.recurrent() && !st)) return false;
    py::object arr = lane_leaf(obs.ptr(), tensor_type);
    if (arr.is_none()) return false;
    auto x = py::reinterpret_borrow<py::array>(arr);
    if (x.shape(x.ndim() - 1) != f.obs_dim || (x.ndim() == 3 && !f.recurrent())) return false;
    out.B = int(x.shape(0));
    out.with_t = x.ndim() == 3;
    out.obs = std::move(arr);
    if (!f.recurrent()) return true;
    if (!f.Hc) return lane_state(st, f.Ha, f.lstm_a, out.B, tensor_type, out.state);
    if (!PyDict_CheckExact(st.ptr()) || PyDict_GET_SIZE(st.ptr()) != 2) return false;
    py::object sa = lane_get(st.ptr(), s_actor), sc = lane_get(st.ptr(), s_critic);
    return lane_state(sa, f.Ha, f.lstm_a, out.B, tensor_type, out.state) &&
           lane_state(sc, f.Hc, f.lstm_c, out.B, tensor_type, out.state + 2);
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

    LaneForm form() const { return lane_form(policy, qnet); }

    // The step's outputs as a fresh dict of torch tensors, or None to run the Python path.
    py::object call(py::handle batch, bool det, double eps) {
        if (!armed || !class_fresh()) return py::none();
        const LaneForm f = form();
        LaneBatch lb;
        if (!lane_batch(batch, f, tensor_type.ptr(), lb)) return py::none();
        const bool draws = !det && (policy || eps > 0.0);  // the Python path keys the stream only then
        if (!armed || !fresh(draws, Armed{params, stamp, gen, env_value})) return py::none();
        if (policy) return policy_call(lb, f, det);
        py::tuple r = qnet->step(py::reinterpret_borrow<py::array>(lb.obs), py::none(), eps, det);
        py::object out = new_dict();
        for (int i = 0; i < 3; ++i) put(out, out_keys[i].ptr(), py::object(r[i]));
        return out;
    }

  private:
    static py::object new_dict() {
        PyObject* d = PyDict_New();
        if (!d) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(d);
    }

    // d[key] = torch.from_numpy(a)
    void put(const py::object& d, PyObject* key, const py::handle& a) const {
        PyObject* t = PyObject_CallOneArg(from_numpy.ptr(), a.ptr());
        if (!t) throw py::error_already_set();
        const int rc = PyDict_SetItem(d.ptr(), key, t);
        Py_DECREF(t);
        if (rc) throw py::error_already_set();
    }

    // The policy step on a batch lane_batch took under form f, into fresh arrays shaped as the
    // Python path returns them: dist inputs / actions / logp [B, ...] ([B, 1, ...] when obs had the
    // T axis), every state_out leaf [B, 1, H] (PPO's recurrent branches), then torch tensors
    // sharing them. None when the net was reloaded with other sizes since f was read.
    py::object policy_call(const LaneBatch& lb, const LaneForm& f, bool det) {
        static PyObject* s_state_out = PyUnicode_InternFromString("state_out");
        static PyObject* s_h = PyUnicode_InternFromString("h");
        static PyObject* s_c = PyUnicode_InternFromString("c");
        static PyObject* s_actor = PyUnicode_InternFromString("actor");
        static PyObject* s_critic = PyUnicode_InternFromString("critic");
        auto net = policy->h.get();  // taken after the freshness check, as Policy.step takes it
        if (!(lane_form(*net) == f)) return py::none();
        const py::ssize_t B = lb.B;
        auto lead = [&](std::initializer_list<py::ssize_t> tail) {
            std::vector<py::ssize_t> s{B};
            if (lb.with_t) s.push_back(1);
            s.insert(s.end(), tail);
            return s;
        };
        const py::ssize_t D = net->dist_dim(), na = net->n_action_cols();
        const bool gauss = is_gaussian(net->dist);
        py::array_t<float> dist(lead({D})), logp(lead({}));
        // actions: Gaussian [B, A] float32, multi-categorical [B, n] int64, categorical [B] int64
        py::array act = gauss ? py::array(py::array_t<float>(lead({na})))
                              : py::array(py::array_t<int64_t>(net->dist == DIST_MULTI_CATEGORICAL ? lead({na})
                                                                                                  : lead({})));
        StepIO io;
        io.obs = static_cast<const float*>(py::reinterpret_borrow<py::array>(lb.obs).data());
        io.ldobs = f.obs_dim;
        io.B = int(B);
        io.dist = dist.mutable_data();
        if (gauss) io.act_f = static_cast<float*>(act.mutable_data());
        else io.act_i = static_cast<int64_t*>(act.mutable_data());
        io.logp = logp.mutable_data();
        io.det = det;
        const int H[4] = {f.Ha, f.lstm_a ? f.Ha : 0, f.Hc, f.lstm_c ? f.Hc : 0};
        py::array_t<float> st_out[4];
        const float* in[4] = {nullptr, nullptr, nullptr, nullptr};
        float* outp[4] = {nullptr, nullptr, nullptr, nullptr};
        for (int i = 0; i < 4; ++i) {
            if (!H[i]) continue;
            in[i] = static_cast<const float*>(py::reinterpret_borrow<py::array>(lb.state[i]).data());
            st_out[i] = py::array_t<float>(std::vector<py::ssize_t>{B, 1, H[i]});
            outp[i] = st_out[i].mutable_data();
        }
        io.ha = in[0]; io.ca = in[1]; io.hc = in[2]; io.cc = in[3];
        io.ha_out = outp[0]; io.ca_out = outp[1]; io.hc_out = outp[2]; io.cc_out = outp[3];
        PyPolicy::run(*net, io);
        py::object out = new_dict();
        put(out, out_keys[0].ptr(), dist);
        put(out, out_keys[1].ptr(), act);
        put(out, out_keys[2].ptr(), logp);
        if (!f.recurrent()) return out;
        // the plan's state_out: {"h", "c"} (GRU: "h"), nested {"actor", "critic"} with a critic rnn
        py::object parts[2];
        for (int p = 0; p < (f.Hc ? 2 : 1); ++p) {
            parts[p] = new_dict();
            put(parts[p], s_h, st_out[2 * p]);
            if (H[2 * p + 1]) put(parts[p], s_c, st_out[2 * p + 1]);
        }
        py::object so = parts[0];
        if (f.Hc) {
            so = new_dict();
            if (PyDict_SetItem(so.ptr(), s_actor, parts[0].ptr()) || PyDict_SetItem(so.ptr(), s_critic, parts[1].ptr()))
                throw py::error_already_set();
        }
        if (PyDict_SetItem(out.ptr(), s_state_out, so.ptr())) throw py::error_already_set();
        return out;
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
        .def(py::init([](py::object net, py::list gen_cell, py::dict env_data, py::object env_key,
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
                 l->net_obj = net;
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
                 LaneBatch lb;
                 if (!lane_batch(batch, l.form(), l.tensor_type.ptr(), lb)) return false;
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
             "The step's output dict for a batch lane_takes takes (numpy or CPU tensors), or None when the "
             "Python path must run (another batch form, or anything changed since arming).");
    m.def("lane_takes", [](py::handle batch, py::object net, py::handle tensor_type) {
        const bool pol = py::isinstance<PyPolicy>(net);
        RF_CHECK(pol || py::isinstance<PyQNet>(net), "lane_takes: net: expected a _C.Policy or _C.QNet");
        LaneBatch lb;
        return lane_batch(batch, lane_form(pol ? net.cast<PyPolicy*>() : nullptr, pol ? nullptr : net.cast<PyQNet*>()),
                          tensor_type.ptr(), lb);
    }, py::arg("batch"), py::arg("net"), py::arg("tensor_type"),
          "Whether a Lane over this net (a _C.Policy or _C.QNet, as loaded now) takes this batch's form: "
          "{'obs': float32 [B, O]}; a recurrent Policy: {'obs': [B, O] or [B, 1, O], 'state_in': its state "
          "layout of [B, H] or [B, 1, H]}; C-contiguous aligned numpy arrays or CPU tensors (exact types, no grad).");
    m.def("type_version", [](py::type cls) { return type_version(reinterpret_cast<PyTypeObject*>(cls.ptr())); },
          py::arg("cls"), "CPython's version tag of a class (changes whenever it or a base is modified; 0: none).");
}
