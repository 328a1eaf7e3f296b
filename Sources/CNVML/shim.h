#ifndef CAID_CNVML_SHIM_H
#define CAID_CNVML_SHIM_H
// The part of NVIDIA's NVML ABI that caid's GPU attester uses: the confidential-computing structs, the return code
// type, the architecture numbers and the signatures of the entry points it resolves. libnvidia-ml is loaded with
// dlopen at run time, not linked, so that caid builds and runs on hosts without an NVIDIA driver; this header
// declares no function, only the types of the pointers dlsym gives.
//
// Names, field types, field order and values are those of nvml.h as NVIDIA/go-nvml carries it: gen/nvml/nvml.h at
// tag v0.13.3-0 ("NVML VERSION: 13.3.29"). The three structs and their size macros are the same there at tag
// v0.12.2-0 (NVML 12.2.140, driver r535, the first with confidential computing), so one layout serves every driver
// caid supports. Only what caid uses is declared; nvml.h's comments are not reproduced.

typedef struct nvmlDevice_st* nvmlDevice_t;

/// NVML's return codes (an int-sized enum in nvml.h); caid tests for success and prints the rest with
/// nvmlErrorString.
typedef enum nvmlReturn_enum
{
    NVML_SUCCESS = 0,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_UNKNOWN = 999
} nvmlReturn_t;

/// nvmlDeviceGetArchitecture's values for the architectures caid names.
#define NVML_DEVICE_ARCH_HOPPER    9
#define NVML_DEVICE_ARCH_BLACKWELL 10

typedef unsigned int nvmlDeviceArchitecture_t;

/// nvmlConfComputeSystemState_t.ccFeature
#define NVML_CC_SYSTEM_FEATURE_DISABLED 0
#define NVML_CC_SYSTEM_FEATURE_ENABLED  1

typedef struct nvmlConfComputeSystemState_st {
    unsigned int environment;
    unsigned int ccFeature;
    unsigned int devToolsMode;
} nvmlConfComputeSystemState_t;

/// nvmlDeviceGetConfComputeGpuCertificate: the GPU's certificate chain and the attestation one.
#define NVML_GPU_CERT_CHAIN_SIZE 0x1000
#define NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE 0x1400

typedef struct nvmlConfComputeGpuCertificate_st {
    unsigned int certChainSize;
    unsigned int attestationCertChainSize;
    unsigned char certChain[NVML_GPU_CERT_CHAIN_SIZE];
    unsigned char attestationCertChain[NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE];
} nvmlConfComputeGpuCertificate_t;

/// nvmlDeviceGetConfComputeGpuAttestationReport: the caller puts the 32-byte nonce in; NVML fills the sizes and
/// the SPDM report (and the CEC's, on GPUs that have one).
#define NVML_CC_GPU_CEC_NONCE_SIZE 0x20
#define NVML_CC_GPU_ATTESTATION_REPORT_SIZE 0x2000
#define NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE 0x1000

typedef struct nvmlConfComputeGpuAttestationReport_st {
    unsigned int isCecAttestationReportPresent;
    unsigned int attestationReportSize;
    unsigned int cecAttestationReportSize;
    unsigned char nonce[NVML_CC_GPU_CEC_NONCE_SIZE];
    unsigned char attestationReport[NVML_CC_GPU_ATTESTATION_REPORT_SIZE];
    unsigned char cecAttestationReport[NVML_CC_GPU_CEC_ATTESTATION_REPORT_SIZE];
} nvmlConfComputeGpuAttestationReport_t;

// Swift does not import C arrays of more than 4096 elements (the two 0x2000 and 0x1400 byte buffers above), so
// these hand Swift the fields' addresses as C lays them out.
static inline const unsigned char *caid_nvml_attestation_report(const nvmlConfComputeGpuAttestationReport_t *report) {
    return report->attestationReport;
}

static inline const unsigned char *caid_nvml_attestation_cert_chain(const nvmlConfComputeGpuCertificate_t *certificate) {
    return certificate->attestationCertChain;
}

// The entry points caid resolves with dlsym, as pointer types of nvml.h's prototypes (caid's names, nvml.h's
// signatures).
typedef nvmlReturn_t (*caid_nvmlInit_v2_fn)(void);
typedef nvmlReturn_t (*caid_nvmlShutdown_fn)(void);
typedef const char* (*caid_nvmlErrorString_fn)(nvmlReturn_t result);
typedef nvmlReturn_t (*caid_nvmlSystemGetDriverVersion_fn)(char *version, unsigned int length);
typedef nvmlReturn_t (*caid_nvmlSystemGetConfComputeState_fn)(nvmlConfComputeSystemState_t *state);
typedef nvmlReturn_t (*caid_nvmlDeviceGetCount_v2_fn)(unsigned int *deviceCount);
typedef nvmlReturn_t (*caid_nvmlDeviceGetHandleByIndex_v2_fn)(unsigned int index, nvmlDevice_t *device);
typedef nvmlReturn_t (*caid_nvmlDeviceGetName_fn)(nvmlDevice_t device, char *name, unsigned int length);
typedef nvmlReturn_t (*caid_nvmlDeviceGetUUID_fn)(nvmlDevice_t device, char *uuid, unsigned int length);
typedef nvmlReturn_t (*caid_nvmlDeviceGetVbiosVersion_fn)(nvmlDevice_t device, char *version, unsigned int length);
typedef nvmlReturn_t (*caid_nvmlDeviceGetArchitecture_fn)(nvmlDevice_t device, nvmlDeviceArchitecture_t *arch);
typedef nvmlReturn_t (*caid_nvmlDeviceGetConfComputeGpuCertificate_fn)(nvmlDevice_t device,
                                                                       nvmlConfComputeGpuCertificate_t *gpuCert);
typedef nvmlReturn_t (*caid_nvmlDeviceGetConfComputeGpuAttestationReport_fn)(nvmlDevice_t device,
                                                                             nvmlConfComputeGpuAttestationReport_t *gpuAtstReport);

#endif
