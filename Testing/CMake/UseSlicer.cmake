# Stand-ins for the Slicer macros the extension calls (see SlicerConfig.cmake beside this file).
option(BUILD_TESTING "Register the module's tests" ON)
if(BUILD_TESTING)
  enable_testing()
endif()

# slicerMacroBuildScriptedModule(NAME n SCRIPTS ... [RESOURCES ...] [WITH_GENERIC_TESTS]): like Slicer's (through
# ctkMacroCompilePythonScript), copy every script and resource to <build>/<Slicer_QTSCRIPTEDMODULES_LIB_DIR> and
# install it to <Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR>, keeping its path relative to the module's folder.
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MODULE "WITH_GENERIC_TESTS;WITH_SUBDIR" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT MODULE_NAME OR NOT MODULE_SCRIPTS)
    message(FATAL_ERROR "slicerMacroBuildScriptedModule: NAME and SCRIPTS are required")
  endif()
  set(copied)
  foreach(file ${MODULE_SCRIPTS} ${MODULE_RESOURCES})
    get_filename_component(source ${file} ABSOLUTE BASE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
    if(NOT EXISTS ${source})
      message(FATAL_ERROR "slicerMacroBuildScriptedModule: ${file} does not exist")
    endif()
    file(RELATIVE_PATH relative ${CMAKE_CURRENT_SOURCE_DIR} ${source})
    if(relative MATCHES "^\\.\\.")
      message(FATAL_ERROR "slicerMacroBuildScriptedModule: ${file} lies outside the module folder")
    endif()
    set(target ${Slicer_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}/${relative})
    add_custom_command(OUTPUT ${target} COMMAND ${CMAKE_COMMAND} -E copy_if_different ${source} ${target}
      DEPENDS ${source})
    list(APPEND copied ${target})
    get_filename_component(folder ${relative} DIRECTORY)
    install(FILES ${source} DESTINATION ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}/${folder}
      COMPONENT RuntimeLibraries)
  endforeach()
  add_custom_target(${MODULE_NAME}PythonFiles ALL DEPENDS ${copied})
endfunction()

# slicer_add_python_unittest(SCRIPT s): register the script's unittest as a ctest (here a check that it exists; Slicer
# runs it with "Slicer --python-code").
function(slicer_add_python_unittest)
  cmake_parse_arguments(TEST "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${TEST_SCRIPT})
    message(FATAL_ERROR "slicer_add_python_unittest: ${TEST_SCRIPT} does not exist")
  endif()
  get_filename_component(name ${TEST_SCRIPT} NAME_WE)
  add_test(NAME py_${name} COMMAND ${CMAKE_COMMAND} -E cat ${CMAKE_CURRENT_SOURCE_DIR}/${TEST_SCRIPT})
endfunction()
