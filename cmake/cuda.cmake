# The CUDA plugin libquiver-cuda.so (issue 6). QUIVER_CUDA=AUTO builds it when nvcc is
# found, ON requires nvcc, OFF skips it. The main binary never links CUDA: the plugin is
# dlopened at start-up (src/compute/device.c), so the same `quiver` runs with or without a
# GPU. nvcc is driven by custom commands rather than CMake's CUDA language so that the C
# flags set above (-Wall -Werror, the sanitizers) never reach it and a machine without
# nvcc never probes for one.
set(QUIVER_CUDA AUTO CACHE STRING "Build the CUDA plugin: AUTO (when nvcc exists), ON, OFF")
set_property(CACHE QUIVER_CUDA PROPERTY STRINGS AUTO ON OFF)
# sm_80 (A100) and sm_90 (H100/H200) as SASS, plus compute_90 PTX for newer cards; two
# targets keep a 2-core CI build at well under a minute per file.
set(QUIVER_CUDA_ARCHS "-gencode=arch=compute_80,code=sm_80;-gencode=arch=compute_90,code=[sm_90,compute_90]"
    CACHE STRING "nvcc -gencode flags for the CUDA plugin")

target_compile_definitions(quiver_core PRIVATE QV_PLUGIN_DIR="${CMAKE_INSTALL_PREFIX}/lib/quiver")

# A test plugin (no CUDA): proves dlopen, the entry point, the API-version check and the
# reason reporting on machines without a GPU (tests/unit/test_device.c).
add_library(qv_fake_plugin SHARED tests/unit/fake_plugin.c)
target_include_directories(qv_fake_plugin PRIVATE include src)
if(QUIVER_SANITIZE)
  target_compile_options(qv_fake_plugin PRIVATE -fno-sanitize=all)
  target_link_options(qv_fake_plugin PRIVATE -fno-sanitize=all)
endif()
if(TARGET test_device)
  add_dependencies(test_device qv_fake_plugin)
  target_compile_definitions(test_device PRIVATE QV_FAKE_PLUGIN="$<TARGET_FILE:qv_fake_plugin>")
endif()
target_link_libraries(quiver_core PUBLIC ${CMAKE_DL_LIBS})

if(NOT QUIVER_CUDA STREQUAL "OFF")
  find_program(QUIVER_NVCC nvcc HINTS ENV CUDA_HOME ENV CUDA_PATH PATH_SUFFIXES bin
               PATHS /usr/local/cuda/bin /usr/local/cuda)
  if(NOT QUIVER_NVCC)
    if(QUIVER_CUDA STREQUAL "ON")
      message(FATAL_ERROR "QUIVER_CUDA=ON but nvcc was not found (set CUDA_HOME)")
    endif()
    message(STATUS "nvcc not found: the CUDA plugin is not built (Quiver runs on the CPU)")
  else()
    # nvcc may be a wrapper script elsewhere (/usr/local/bin/nvcc): find cuBLAS itself for
    # the link path and the plugin's runpath.
    get_filename_component(QUIVER_NVCC_REAL ${QUIVER_NVCC} REALPATH)
    get_filename_component(QUIVER_CUDA_BIN ${QUIVER_NVCC_REAL} DIRECTORY)
    find_library(QUIVER_CUBLAS cublas HINTS ${QUIVER_CUDA_BIN}/../lib64 ENV CUDA_HOME ENV CUDA_PATH
                 PATH_SUFFIXES lib64 lib PATHS /usr/local/cuda/lib64 /usr/local/cuda)
    if(QUIVER_CUBLAS)
      get_filename_component(QUIVER_CUDA_LIBDIR ${QUIVER_CUBLAS} DIRECTORY)
    else()
      set(QUIVER_CUDA_LIBDIR ${QUIVER_CUDA_BIN}/../lib64)
    endif()
    message(STATUS "CUDA plugin: ${QUIVER_NVCC} (cuBLAS in ${QUIVER_CUDA_LIBDIR})")
    file(GLOB QUIVER_CUDA_SOURCES CONFIGURE_DEPENDS src/cuda/*.cu)
    file(GLOB QUIVER_CUDA_HEADERS CONFIGURE_DEPENDS src/cuda/*.h)
    set(QUIVER_CUDA_FLAGS -std=c++17 -O3 -Xcompiler=-fPIC,-Wall -Werror=all-warnings
        -I${CMAKE_SOURCE_DIR}/src -I${CMAKE_SOURCE_DIR}/include ${QUIVER_CUDA_ARCHS})
    set(QUIVER_CUDA_OBJECTS)
    foreach(cu ${QUIVER_CUDA_SOURCES})
      get_filename_component(stem ${cu} NAME_WE)
      set(obj ${CMAKE_BINARY_DIR}/cuda/${stem}.o)
      add_custom_command(OUTPUT ${obj}
        COMMAND ${CMAKE_COMMAND} -E make_directory ${CMAKE_BINARY_DIR}/cuda
        COMMAND ${QUIVER_NVCC} ${QUIVER_CUDA_FLAGS} -c ${cu} -o ${obj}
        DEPENDS ${cu} ${QUIVER_CUDA_HEADERS} src/compute/backend.h src/compute/gpt_ops.h src/compute/plugin.h include/quiver.h
        COMMENT "nvcc ${stem}.cu" VERBATIM)
      list(APPEND QUIVER_CUDA_OBJECTS ${obj})
    endforeach()
    set(QUIVER_CUDA_PLUGIN_FILE ${CMAKE_BINARY_DIR}/libquiver-cuda.so)
    add_custom_command(OUTPUT ${QUIVER_CUDA_PLUGIN_FILE}
      COMMAND ${QUIVER_NVCC} -shared -o ${QUIVER_CUDA_PLUGIN_FILE} ${QUIVER_CUDA_OBJECTS}
              -L${QUIVER_CUDA_LIBDIR} -lcublas -lcublasLt -cudart static -Xlinker=-rpath,${QUIVER_CUDA_LIBDIR}
      DEPENDS ${QUIVER_CUDA_OBJECTS}
      COMMENT "nvcc: linking libquiver-cuda.so" VERBATIM)
    add_custom_target(quiver_cuda ALL DEPENDS ${QUIVER_CUDA_PLUGIN_FILE})
    install(FILES ${QUIVER_CUDA_PLUGIN_FILE} DESTINATION lib/quiver)
  endif()
endif()

# The GPU test and benchmark binaries are plain C over quiver_core, so every build
# compiles them; `make gpu-test` / `make gpu-bench` run them where a GPU is lent. ctest
# runs the test binary's --self mode (the CPU backend standing in for the device), which
# checks the harness itself on any machine.
add_executable(qv_gpu_test tests/gpu/test_gpu_ops.c)
target_link_libraries(qv_gpu_test PRIVATE quiver_core)
add_test(NAME gpu_harness_self COMMAND qv_gpu_test --self)
add_executable(qv_gpu_gpt_test tests/gpu/test_gpu_gpt.c)
target_link_libraries(qv_gpu_gpt_test PRIVATE quiver_core)
add_test(NAME gpu_gpt_harness_self COMMAND qv_gpu_gpt_test --self)
add_executable(qv_gpu_bench bench/gpu_bench.c)
target_link_libraries(qv_gpu_bench PRIVATE quiver_core)
