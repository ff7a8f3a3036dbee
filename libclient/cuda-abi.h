/* The few types and constants of the CUDA driver API that client-space-cuda.c uses, written
 * out here because libclient may not include CUDA's headers (docs/ARCHITECTURE.md section 8)
 * and loads libcuda.so.1 at run time, so that a library built with CUDA still runs where no
 * driver is installed. They are the driver's stable ABI; tests/test-space-cuda-abi.c checks
 * each against cuda.h in every CUDA build. */
#ifndef LLEP_CUDA_ABI_H
#define LLEP_CUDA_ABI_H

#include <stddef.h>

typedef int llep_cu_result;                 /* CUresult; 0 is CUDA_SUCCESS */
typedef int llep_cu_device;                 /* CUdevice */
typedef struct llep_cu_ctx *llep_cu_context;   /* CUcontext */
typedef struct llep_cu_event *llep_cu_event;   /* CUevent */
typedef struct llep_cu_stream *llep_cu_stream; /* CUstream; NULL: the legacy default stream */
typedef unsigned long long llep_cu_deviceptr;  /* CUdeviceptr */
typedef unsigned long long llep_cu_mem_handle; /* CUmemGenericAllocationHandle */

typedef struct llep_cu_ipc_event_handle {   /* CUipcEventHandle */
    char reserved[64];
} llep_cu_ipc_event_handle;

typedef struct llep_cu_mem_location {       /* CUmemLocation */
    int type;
    int id;
} llep_cu_mem_location;

typedef struct llep_cu_mem_prop {           /* CUmemAllocationProp */
    int type;
    int requested_handle_types;
    llep_cu_mem_location location;
    void *win32_handle_meta_data;
    struct {
        unsigned char compression_type;
        unsigned char gpu_direct_rdma_capable;
        unsigned short usage;
        unsigned char reserved[4];
    } alloc_flags;
} llep_cu_mem_prop;

typedef struct llep_cu_mem_access_desc {    /* CUmemAccessDesc */
    llep_cu_mem_location location;
    int flags;
} llep_cu_mem_access_desc;

#define LLEP_CU_MEM_ALLOCATION_TYPE_PINNED 1
#define LLEP_CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR 1
#define LLEP_CU_MEM_LOCATION_TYPE_DEVICE 1
#define LLEP_CU_MEM_ACCESS_FLAGS_PROT_READWRITE 3
#define LLEP_CU_MEM_ALLOC_GRANULARITY_MINIMUM 0
#define LLEP_CU_EVENT_DISABLE_TIMING 2
#define LLEP_CU_EVENT_INTERPROCESS 4

#endif
