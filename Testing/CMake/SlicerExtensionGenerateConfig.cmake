# Stand-in: Slicer's generates <extension>Config.cmake and checks the extension's description; this one checks the
# metadata the Extensions Index needs and writes the config file.
foreach(field HOMEPAGE CATEGORY CONTRIBUTORS DESCRIPTION ICONURL SCREENSHOTURLS DEPENDS)
  if(NOT DEFINED EXTENSION_${field} OR "${EXTENSION_${field}}" STREQUAL "")
    message(FATAL_ERROR "EXTENSION_${field} is not set")
  endif()
endforeach()
file(WRITE ${CMAKE_BINARY_DIR}/${PROJECT_NAME}Config.cmake
  "set(${PROJECT_NAME}_DEPENDS \"${EXTENSION_DEPENDS}\")\n")
