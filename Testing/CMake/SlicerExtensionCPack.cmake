# Stand-in: Slicer's packages the installed extension for the Extensions Index; this one only names the package.
set(CPACK_PACKAGE_NAME ${PROJECT_NAME})
include(CPack)
