// The only file that knows pybind11: argument checks at the border, GIL released around work.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
    m.doc() = "rlmodule_fast C++ CPU backend (torch-free kernels on raw pointers)";
    m.attr("__version__") = "0.1.0";
}
