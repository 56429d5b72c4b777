# A stand-in for the Slicer SDK's SlicerConfig.cmake, used by Testing/Python/test_extension_build.py (and .ci/run):
# it provides what the extension's CMakeLists.txt files use from Slicer, under the same names and with Slicer's
# build and install layout, so that configuring, building and installing the extension checks OUR CMake (the script
# globs, the resource copies, the install destinations, the extension metadata). It does not check Slicer's macros:
# UseSlicer.cmake here reimplements only what they are documented to do with our arguments.
set(Slicer_FOUND TRUE)
set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 8)
set(Slicer_BINARY_DIR ${CMAKE_BINARY_DIR})
set(Slicer_LIB_DIR lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR})
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_LIB_DIR}/qt-scripted-modules)
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR ${Slicer_QTSCRIPTEDMODULES_LIB_DIR})
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionGenerateConfig.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/SlicerExtensionCPack.cmake)
