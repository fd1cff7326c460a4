# faiss.cmake: defines `kb_faiss`, the one target through which kbsync gets the
# FAISS C API (<faiss/c_api/*.h>). Prefers a real faiss_c library; Debian 12
# ships only the C++ libfaiss.a, so the fallback is our own C API unit
# (indexer/faiss_c_compat.cpp) built as a static library on top of it.
#
# Knobs: -DKB_FAISS_FORCE_COMPAT=ON skips the faiss_c probe;
#        KB_FAISS_C_LIBRARY / KB_FAISS_C_INCLUDE_DIR point at a faiss_c install.
# Sets KB_FAISS_IMPL to "system" or "compat" for the includer.
include_guard(GLOBAL)

option(KB_FAISS_FORCE_COMPAT "Always build indexer/faiss_c_compat.cpp" OFF)

# The C API functions kbsync calls (indexer/*.c), every one of them and no
# other; a faiss_c lacking any of them is unusable. That includes the
# per-call search parameters declared in indexer/faiss_c_ext.h (official
# since FAISS 1.7.4, absent from 1.7.3's C API): an older faiss_c that lacks
# them falls back to the compat unit. The check below the probe fails the
# configure step when indexer/ calls a faiss_ function the probe does not.
set(_kb_faiss_probe_src [=[
#include <faiss/c_api/IndexIVF_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/MetaIndexes_c.h>
#include <faiss/c_api/clone_index_c.h>
#include <faiss/c_api/error_c.h>
#include <faiss/c_api/index_factory_c.h>
#include <faiss/c_api/index_io_c.h>
#include <faiss/c_api/utils/distances_c.h>
#include "faiss_c_ext.h"
#include <stdio.h>
int main(int argc, char **argv)
{
    /* Called, not just named: a referenced address can be folded away. */
    FaissIndex *idx = 0;
    FaissSearchParametersIVF *ivf = 0;
    FaissSearchParametersHNSW *hnsw = 0;
    float x[4] = {0}, d = 0;
    idx_t l = 0;
    if (argc > 99) {
        faiss_index_factory(&idx, 4, argv[0], METRIC_INNER_PRODUCT);
        faiss_Index_train(idx, 1, x);
        faiss_Index_add_with_ids(idx, 1, x, &l);
        FaissIndex *copy = 0;
        faiss_clone_index(idx, &copy);
        faiss_Index_free(copy);
        faiss_Index_search(idx, 1, x, 1, &d, &l);
        faiss_SearchParametersIVF_new_with(&ivf, 0, 1, 0);
        faiss_SearchParametersHNSW_new_with(&hnsw, 0, 16);
        faiss_Index_search_with_params(idx, 1, x, 1,
                                       (FaissSearchParameters *)ivf, &d, &l);
        faiss_SearchParameters_free((FaissSearchParameters *)ivf);
        faiss_SearchParameters_free((FaissSearchParameters *)hnsw);
        faiss_Index_reconstruct(idx, l, x);
        faiss_IndexIVF_make_direct_map(
            faiss_IndexIVF_cast(faiss_IndexIDMap2_sub_index(
                faiss_IndexIDMap2_cast(idx))),
            1);
        faiss_write_index(idx, stdout);
        faiss_read_index(stdin, 0, &idx);
        faiss_set_distance_compute_blas_threshold(argc);
        int r = faiss_Index_d(idx) + faiss_Index_is_trained(idx) +
                (int)faiss_Index_ntotal(idx) + faiss_Index_metric_type(idx);
        faiss_Index_free(idx);
        return r;
    }
    return faiss_get_last_error() != 0;
}
]=])

# Every faiss_ function called in indexer/*.c and *.h must be in the probe.
# The files are configure dependencies, so an edit re-runs this check.
file(GLOB _kb_idx_src ${CMAKE_CURRENT_LIST_DIR}/../indexer/*.c
     ${CMAKE_CURRENT_LIST_DIR}/../indexer/*.h
     ${CMAKE_CURRENT_LIST_DIR}/../indexer/include/*.h)
list(FILTER _kb_idx_src EXCLUDE REGEX "faiss_c_ext\\.h$")
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${_kb_idx_src})
foreach(_f ${_kb_idx_src})
  file(READ ${_f} _txt)
  string(REGEX MATCHALL "faiss_[A-Za-z0-9_]+[ \t\n]*\\(" _calls "${_txt}")
  foreach(_c ${_calls})
    string(REGEX REPLACE "[ \t\n]*\\($" "" _c "${_c}")
    string(FIND "${_kb_faiss_probe_src}" "${_c}(" _at)
    if(_at EQUAL -1)
      message(FATAL_ERROR "${_f} calls ${_c}, which cmake/faiss.cmake's probe "
                          "does not: add it there, so that a faiss_c without "
                          "it is not taken")
    endif()
  endforeach()
endforeach()

# Dependencies of the C++ libfaiss.a: OpenMP (the imported `faiss` target
# names OpenMP::OpenMP_CXX without finding it, hence the order), BLAS and
# LAPACK (absolute paths inside the target) and libstdc++ (our link below).
macro(_kb_faiss_find_cxx_faiss)
  get_property(_kb_langs GLOBAL PROPERTY ENABLED_LANGUAGES)
  if(NOT "CXX" IN_LIST _kb_langs)
    enable_language(CXX)
  endif()
  find_package(OpenMP REQUIRED COMPONENTS CXX)
  find_package(faiss REQUIRED CONFIG)
endmacro()

set(KB_FAISS_IMPL "")
if(NOT KB_FAISS_FORCE_COMPAT)
  find_library(KB_FAISS_C_LIBRARY NAMES faiss_c)
  find_path(KB_FAISS_C_INCLUDE_DIR NAMES faiss/c_api/index_factory_c.h)
  if(KB_FAISS_C_LIBRARY AND KB_FAISS_C_INCLUDE_DIR)
    include(CheckCSourceCompiles)
    include(CMakePushCheckState)
    cmake_push_check_state(RESET)
    set(CMAKE_REQUIRED_QUIET ON)
    set(CMAKE_REQUIRED_INCLUDES ${KB_FAISS_C_INCLUDE_DIR}
        ${CMAKE_CURRENT_LIST_DIR}/../indexer)
    set(CMAKE_REQUIRED_LIBRARIES ${KB_FAISS_C_LIBRARY})
    set(_kb_faiss_c_static OFF)
    if(KB_FAISS_C_LIBRARY MATCHES "\\.a$")
      # A static faiss_c needs the C++ library and its runtime at link time.
      set(_kb_faiss_c_static ON)
      _kb_faiss_find_cxx_faiss()
      list(APPEND CMAKE_REQUIRED_LIBRARIES faiss OpenMP::OpenMP_CXX stdc++ m)
    endif()
    # The cache key names the library and the probe's hash, so that
    # pointing at another library, or probing for more functions, re-runs it.
    string(MD5 _kb_probe_md5 "${_kb_faiss_probe_src}")
    string(SUBSTRING "${_kb_probe_md5}" 0 8 _kb_probe_md5)
    string(MAKE_C_IDENTIFIER
           "KB_FAISS_C_WORKS_${KB_FAISS_C_LIBRARY}_${_kb_probe_md5}" _kb_key)
    check_c_source_compiles("${_kb_faiss_probe_src}" ${_kb_key})
    cmake_pop_check_state()
    if(${_kb_key})
      add_library(kb_faiss INTERFACE)
      target_include_directories(kb_faiss INTERFACE ${KB_FAISS_C_INCLUDE_DIR})
      target_link_libraries(kb_faiss INTERFACE ${KB_FAISS_C_LIBRARY})
      if(_kb_faiss_c_static)
        target_link_libraries(kb_faiss INTERFACE faiss OpenMP::OpenMP_CXX
                              stdc++ m)
      else()
        # kbsync sets OpenMP thread counts itself (omp_set_num_threads), so
        # the runtime must be on the C link line, not only behind faiss_c.
        find_package(OpenMP QUIET COMPONENTS C)
        if(TARGET OpenMP::OpenMP_C)
          target_link_libraries(kb_faiss INTERFACE
                                $<LINK_ONLY:OpenMP::OpenMP_C>)
        endif()
      endif()
      set(KB_FAISS_IMPL "system")
      message(STATUS "kb_faiss: using system faiss_c ${KB_FAISS_C_LIBRARY}")
    else()
      message(STATUS "kb_faiss: ${KB_FAISS_C_LIBRARY} does not link the "
                     "C API functions kbsync needs; not using it")
    endif()
  endif()
endif()

if(NOT KB_FAISS_IMPL)
  _kb_faiss_find_cxx_faiss()
  add_library(kb_faiss STATIC
              ${CMAKE_CURRENT_LIST_DIR}/../indexer/faiss_c_compat.cpp)
  # faiss's headers need C++11; the rest of the project may ask for more.
  target_compile_features(kb_faiss PRIVATE cxx_std_11)
  set_target_properties(kb_faiss PROPERTIES POSITION_INDEPENDENT_CODE ON)
  # PUBLIC: C consumers get faiss's include dir (c_api headers live there),
  # libfaiss.a, and through it OpenMP + BLAS + LAPACK. libstdc++ is named
  # explicitly: CMake already links C programs with the C++ driver because a
  # static CXX library is in their closure, but a consumer that forces
  # LINKER_LANGUAGE C (or links the archive by hand) must still resolve it.
  target_link_libraries(kb_faiss PUBLIC faiss OpenMP::OpenMP_CXX stdc++ m)
  # What the compat unit does beyond the C API's contract, for the C code
  # that sizes its expectations by it (idx_vec.c: a clone's room).
  target_compile_definitions(kb_faiss INTERFACE KB_FAISS_COMPAT=1)
  set(KB_FAISS_IMPL "compat")
  get_target_property(_kb_faiss_loc faiss IMPORTED_LOCATION_NONE)
  message(STATUS "kb_faiss: no usable faiss_c library; building "
                 "indexer/faiss_c_compat.cpp on ${_kb_faiss_loc} "
                 "(faiss ${faiss_VERSION}, OpenMP ${OpenMP_CXX_VERSION})")
endif()
