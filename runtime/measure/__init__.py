"""Expected launch measurements of Conclave CVM images, computed offline from the image parts.

- tdvf: TDX MRTD from the TD firmware's TDVF metadata (what the TDX module accumulates while
  the VMM adds and measures the firmware pages).
- ccel: TDX RTMR values by replaying a CC event log (ACPI CCEL table + log area).
- snp: SEV-SNP launch digest through the `sev-snp-measure` package.
- fragment: the attestation-policy fragment (tdx.mr_td/rtmr0..3, snp.measurement) for the
  deployment manifest, validated against runtime/attestation/policy.schema.json.
"""
