# Install the library, header, CMake package config and pkg-config file.
include(CMakePackageConfigHelpers)

install(TARGETS qsdpa EXPORT qsdpaTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES include/qsdpa.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})

set(QSDPA_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/qsdpa)
install(EXPORT qsdpaTargets NAMESPACE qsdpa:: DESTINATION ${QSDPA_CMAKE_DIR})
configure_package_config_file(cmake/qsdpaConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/qsdpaConfig.cmake INSTALL_DESTINATION ${QSDPA_CMAKE_DIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/qsdpaConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/qsdpaConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/qsdpaConfigVersion.cmake
  DESTINATION ${QSDPA_CMAKE_DIR})

# pkg-config: a static build needs the private libraries too.
set(QSDPA_PC_LIBS_PRIVATE "-lpthread -lm")
if(QSDPA_CUDA)
  string(APPEND QSDPA_PC_LIBS_PRIVATE " -L${CUDAToolkit_LIBRARY_DIR} -lcudart_static -ldl -lrt")
endif()
file(RELATIVE_PATH QSDPA_PC_TO_PREFIX "/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/")
configure_file(cmake/qsdpa.pc.in ${CMAKE_CURRENT_BINARY_DIR}/qsdpa.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/qsdpa.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
