// The extension is a plain Python module only so that `import mutualops._C`
// loads the shared library, whose static initialisers register the ops.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
