//! Calls into Python on the per-task path without building an argument
//! tuple or a bound method per call: every tuple is a tracked container that
//! brings the next garbage collection closer. (The vectorcall API is not in
//! the 3.11 stable ABI; these functions of it use vectorcall inside.)

use pyo3::exceptions::PyTypeError;
use std::sync::OnceLock;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};

/// `callable(arg)`.
pub(crate) fn call1<'py>(
    callable: &Bound<'py, PyAny>,
    arg: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: both pointers are live objects (borrowed for the call); the
    // argument list ends with the NULL the variadic API requires; the result
    // is a new reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            callable.py(),
            ffi::PyObject_CallFunctionObjArgs(
                callable.as_ptr(),
                arg.as_ptr(),
                std::ptr::null_mut::<ffi::PyObject>(),
            ),
        )
    }
}

/// `obj.name(arg)`.
pub(crate) fn call_method1<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    arg: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: as in `call1`; `name` is a str, as the API requires.
    unsafe {
        Bound::from_owned_ptr_or_err(
            obj.py(),
            ffi::PyObject_CallMethodObjArgs(
                obj.as_ptr(),
                name.as_ptr(),
                arg.as_ptr(),
                std::ptr::null_mut::<ffi::PyObject>(),
            ),
        )
    }
}

/// A new object of class `cls` made by its `tp_new` with no arguments, as
/// unpickling makes one (`cls.__new__(cls)`, with no method lookup).
pub(crate) fn new_instance<'py>(cls: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let ty = cls.cast::<PyType>()?;
    // SAFETY: `ty` is a live type object; `PyType_GetSlot` reads its
    // `tp_new` slot (any type since 3.10); the slot, when set, has the
    // `newfunc` signature. It is called with the type, an empty argument
    // tuple and no keywords, and returns a new reference or NULL with an
    // exception set.
    unsafe {
        let slot = ffi::PyType_GetSlot(ty.as_type_ptr(), ffi::Py_tp_new);
        if slot.is_null() {
            return Err(PyTypeError::new_err("the class cannot be instantiated"));
        }
        let tp_new: ffi::newfunc = std::mem::transmute(slot);
        let args = PyTuple::empty(py);
        Bound::from_owned_ptr_or_err(
            py,
            tp_new(ty.as_type_ptr(), args.as_ptr(), std::ptr::null_mut()),
        )
    }
}

/// `obj.__dict__`, without looking `__dict__` up on the type.
pub(crate) fn instance_dict<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    // SAFETY: `obj` is a live object; the result is a new reference or NULL
    // with an exception set (no `__dict__`).
    let dict = unsafe {
        Bound::from_owned_ptr_or_err(
            obj.py(),
            ffi::PyObject_GenericGetDict(obj.as_ptr(), std::ptr::null_mut()),
        )?
    };
    Ok(dict.cast_into::<PyDict>()?)
}

/// `obj.__dict__ = dict`.
pub(crate) fn set_instance_dict(obj: &Bound<'_, PyAny>, dict: &Bound<'_, PyDict>) -> PyResult<()> {
    let py = obj.py();
    if inline_values(py) {
        // CPython 3.13's `PyObject_GenericSetDict` stores the dict but leaves
        // an object's inline values in charge of attribute lookup (a fresh
        // object's attributes would all be missing); the `__dict__`
        // descriptor hands the values over to the new dict.
        return obj.setattr(intern!(py, "__dict__"), dict);
    }
    // SAFETY: both are live objects; the call takes its own reference to
    // `dict` and returns -1 with an exception set on failure.
    let rc =
        unsafe { ffi::PyObject_GenericSetDict(obj.as_ptr(), dict.as_ptr(), std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(PyErr::fetch(py))
    }
}

/// Whether objects keep their attributes inline, outside any dict (3.13+).
fn inline_values(py: Python<'_>) -> bool {
    static INLINE: OnceLock<bool> = OnceLock::new();
    *INLINE.get_or_init(|| py.version_info() >= (3, 13))
}
