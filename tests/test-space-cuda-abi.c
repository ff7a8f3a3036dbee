/* libclient/cuda-abi.h against cuda.h: the client library loads the CUDA driver at run time
 * with types of its own (libclient may not include CUDA headers), so every type and constant
 * it declares is checked here, at compile time, in each CUDA build. */
#include <cuda.h>
#include <stddef.h>

#include "cuda-abi.h"

#define SAME_SIZE(a, b) _Static_assert(sizeof(a) == sizeof(b), #a " vs " #b)
#define SAME_OFFSET(a, fa, b, fb) \
    _Static_assert(offsetof(a, fa) == offsetof(b, fb), #a "." #fa " vs " #b "." #fb)

SAME_SIZE(llep_cu_result, CUresult);
SAME_SIZE(llep_cu_device, CUdevice);
SAME_SIZE(llep_cu_context, CUcontext);
SAME_SIZE(llep_cu_event, CUevent);
SAME_SIZE(llep_cu_stream, CUstream);
SAME_SIZE(llep_cu_deviceptr, CUdeviceptr);
SAME_SIZE(llep_cu_mem_handle, CUmemGenericAllocationHandle);
SAME_SIZE(llep_cu_ipc_event_handle, CUipcEventHandle);
SAME_SIZE(llep_cu_mem_location, CUmemLocation);
SAME_OFFSET(llep_cu_mem_location, id, CUmemLocation, id);
SAME_SIZE(llep_cu_mem_prop, CUmemAllocationProp);
SAME_OFFSET(llep_cu_mem_prop, requested_handle_types, CUmemAllocationProp, requestedHandleTypes);
SAME_OFFSET(llep_cu_mem_prop, location, CUmemAllocationProp, location);
SAME_OFFSET(llep_cu_mem_prop, win32_handle_meta_data, CUmemAllocationProp, win32HandleMetaData);
SAME_OFFSET(llep_cu_mem_prop, alloc_flags, CUmemAllocationProp, allocFlags);
SAME_SIZE(llep_cu_mem_access_desc, CUmemAccessDesc);
SAME_OFFSET(llep_cu_mem_access_desc, flags, CUmemAccessDesc, flags);
_Static_assert(LLEP_CU_MEM_ALLOCATION_TYPE_PINNED == CU_MEM_ALLOCATION_TYPE_PINNED, "abi");
_Static_assert(LLEP_CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR ==
               CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, "abi");
_Static_assert(LLEP_CU_MEM_LOCATION_TYPE_DEVICE == CU_MEM_LOCATION_TYPE_DEVICE, "abi");
_Static_assert(LLEP_CU_MEM_ACCESS_FLAGS_PROT_READWRITE == CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
               "abi");
_Static_assert(LLEP_CU_MEM_ALLOC_GRANULARITY_MINIMUM == CU_MEM_ALLOC_GRANULARITY_MINIMUM, "abi");
_Static_assert(LLEP_CU_EVENT_DISABLE_TIMING == CU_EVENT_DISABLE_TIMING, "abi");
_Static_assert(LLEP_CU_EVENT_INTERPROCESS == CU_EVENT_INTERPROCESS, "abi");
_Static_assert(CU_IPC_HANDLE_SIZE == 64, "abi");

int main(void) {
    return 0;
}
