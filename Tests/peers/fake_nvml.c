/* A stand-in for libnvidia-ml.so.1 with the entry points caid's GPU attester resolves, for tests on machines
 * without an NVIDIA GPU. Struct layouts follow nvml.h (r535+). Each GPU's "attestation report" starts with the
 * 32-byte nonce it was given, as a real SPDM report carries the requester's nonce, so a test verifier can check
 * the binding. Built with -DFAKE_NVML_FAIL, the attestation report call fails with NVML_ERROR_NOT_SUPPORTED for
 * every GPU; with -DFAKE_NVML_FAIL_INDEX=N, for GPU N only; with -DFAKE_NVML_CC_OFF, CC mode is off. */
#include <stdio.h>
#include <string.h>

typedef int nvmlReturn_t;
typedef struct fake_device *nvmlDevice_t;
struct fake_device { unsigned int index; };
static struct fake_device devices[2] = {{0}, {1}};

typedef struct {
    unsigned int environment, ccFeature, devToolsMode;
} nvmlConfComputeSystemState_t;

typedef struct {
    unsigned int isCecAttestationReportPresent, attestationReportSize, cecAttestationReportSize;
    unsigned char nonce[32];
    unsigned char attestationReport[0x2000];
    unsigned char cecAttestationReport[0x1000];
} nvmlConfComputeGpuAttestationReport_t;

typedef struct {
    unsigned int certChainSize, attestationCertChainSize;
    unsigned char certChain[0x1000];
    unsigned char attestationCertChain[0x1400];
} nvmlConfComputeGpuCertificate_t;

static int initialized;

nvmlReturn_t nvmlInit_v2(void) { initialized = 1; return 0; }
nvmlReturn_t nvmlShutdown(void) { initialized = 0; return 0; }
const char *nvmlErrorString(nvmlReturn_t result) { return result == 3 ? "Not Supported" : "Unknown Error"; }

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return 1;
    *count = 2;
    return 0;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    snprintf(version, length, "550.127.08");
    return 0;
}

nvmlReturn_t nvmlSystemGetConfComputeState(nvmlConfComputeSystemState_t *state) {
    state->environment = 2; /* production */
#ifdef FAKE_NVML_CC_OFF
    state->ccFeature = 0;
#else
    state->ccFeature = 1;   /* enabled */
#endif
    state->devToolsMode = 0;
    return 0;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (index >= 2) return 2;
    *device = &devices[index];
    return 0;
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    snprintf(uuid, length, "GPU-0000000%u-fake-4a5b-8c9d-0123456789ab", device->index);
    return 0;
}

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    snprintf(name, length, "NVIDIA H20");
    return 0;
}

nvmlReturn_t nvmlDeviceGetVbiosVersion(nvmlDevice_t device, char *version, unsigned int length) {
    snprintf(version, length, "96.00.99.00.0%u", device->index);
    return 0;
}

nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, unsigned int *arch) {
    *arch = 9; /* NVML_DEVICE_ARCH_HOPPER */
    return 0;
}

nvmlReturn_t nvmlDeviceGetConfComputeGpuAttestationReport(nvmlDevice_t device, nvmlConfComputeGpuAttestationReport_t *report) {
#ifdef FAKE_NVML_FAIL
    return 3;
#endif
#ifdef FAKE_NVML_FAIL_INDEX
    if (device->index == FAKE_NVML_FAIL_INDEX) return 3;
#endif
    int n;
    memcpy(report->attestationReport, report->nonce, 32);
    n = snprintf((char *)report->attestationReport + 32, 64, "SPDM-MEASUREMENTS-GPU%u", device->index);
    report->attestationReportSize = 32 + n;
    report->isCecAttestationReportPresent = 0;
    return 0;
}

nvmlReturn_t nvmlDeviceGetConfComputeGpuCertificate(nvmlDevice_t device, nvmlConfComputeGpuCertificate_t *cert) {
    int n = snprintf((char *)cert->attestationCertChain, sizeof cert->attestationCertChain,
                     "-----BEGIN CERTIFICATE-----\nFAKE-GPU%u\n-----END CERTIFICATE-----\n", device->index);
    cert->attestationCertChainSize = n;
    cert->certChainSize = 0;
    return 0;
}
