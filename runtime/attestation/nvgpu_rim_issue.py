"""Test RIM hierarchy: a RIM root shaped like NVIDIA's and RIM swidtags signed by it.

Why: NVIDIA publishes no RIMs for the public sample evidence, and emulated GPUs need RIMs for
their own measurements. This builds the same shape as NVIDIA's (root -> "Reference Value" CA ->
L3 -> "RIM L4 Signer", ECDSA P-384; SWID tag with Meta colloquialVersion/product and
Payload Resource index/active/alternatives/HashK; enveloped XML-DSig, ECDSA-SHA384, SHA-384,
C14N 1.1) so the verifier in nvgpu_rim runs unchanged. A test root is only ever trusted when a
caller passes it explicitly as `rim_roots`; nothing here is used by production verification.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conclave.runtime.attestation.nvgpu_rim import SWID_NS

SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
TCG_RIM_NS = "https://trustedcomputinggroup.org/resource/tcg-reference-integrity-manifest-rim-information-model/"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Conclave Test RIM Authority"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, not_before: datetime,
          not_after: datetime) -> x509.Certificate:
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                      crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    return b.sign(issuer_key, hashes.SHA384())


@dataclass(frozen=True)
class TestRimAuthority:
    """root -> CA -> L3 -> L4 signer; `root` is what a verifier passes as rim_roots."""

    __test__ = False  # not a pytest test class

    root: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # L4 signer first, root last (as NVIDIA's KeyInfo)
    signer_key: ec.EllipticCurvePrivateKey
    # keys of chain[1:] (L3, CA, root): what an emulated OCSP responder signs with for this chain
    ca_keys: tuple[ec.EllipticCurvePrivateKey, ...] = field(default=(), repr=False)

    @classmethod
    def generate(cls, *, now: datetime | None = None, signer_days: int = 730) -> "TestRimAuthority":
        now = now or datetime.now(timezone.utc)
        start = now - timedelta(days=1)
        keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(4)]
        names = [_name("Conclave Test CoRIM signing Root CA"), _name("Conclave Test Reference Value CA"),
                 _name("Conclave Test Reference Value L3"), _name("Conclave Test RIM L4 Signer")]
        far = start + timedelta(days=3650)
        root = _cert(names[0], keys[0], names[0], keys[0], ca=True, not_before=start, not_after=far)
        ca = _cert(names[1], keys[1], names[0], keys[0], ca=True, not_before=start, not_after=far)
        l3 = _cert(names[2], keys[2], names[1], keys[1], ca=True, not_before=start, not_after=far)
        l4 = _cert(names[3], keys[3], names[2], keys[2], ca=False, not_before=start,
                   not_after=start + timedelta(days=signer_days))
        return cls(root=root, chain=(l4, l3, ca, root), signer_key=keys[3], ca_keys=(keys[2], keys[1], keys[0]))

    def sign_rim(self, *, version: str, golden: Mapping[int, tuple[bytes, ...] | bytes],
                 product: str = "GH100", inactive: Mapping[int, bytes] | None = None,
                 names: Mapping[int, str] | None = None) -> bytes:
        """A signed RIM swidtag. `golden`: RIM index (0-based) -> golden value(s), all active;
        `inactive`: indices listed with active="False" (never compared); `names`: resource names
        for some indices (default Measurement_<i>)."""
        from lxml import etree
        from signxml import CanonicalizationMethod, DigestAlgorithm, SignatureMethod, XMLSigner
        nsmap = {None: SWID_NS, "ns0": SWID_NS, "ns2": SHA384_NS}
        root = etree.Element(f"{{{SWID_NS}}}SoftwareIdentity", nsmap=nsmap, corpus="false", name=product,
                             patch="false", supplemental="false", tagId=f"conclave-test-{product}-{version}",
                             version="1.0", tagVersion="0")
        etree.SubElement(root, f"{{{SWID_NS}}}Entity", name="Conclave Test", role="softwareCreator tagCreator")
        meta = etree.SubElement(root, f"{{{SWID_NS}}}Meta", nsmap={"ns1": TCG_RIM_NS},
                                colloquialVersion=version, edition="GPU", product=product, revision="r1")
        meta.set(f"{{{TCG_RIM_NS}}}BindingSpec", "RIMIM")
        payload = etree.SubElement(root, f"{{{SWID_NS}}}Payload")
        entries = {i: (True, v if isinstance(v, tuple) else (v,)) for i, v in golden.items()}
        entries.update({i: (False, (v,)) for i, v in (inactive or {}).items()})
        for index in sorted(entries):
            active, values = entries[index]
            res = etree.SubElement(payload, f"{{{SWID_NS}}}Resource", type="Measurement", index=str(index),
                                   active="True" if active else "False", alternatives=str(len(values)),
                                   name=(names or {}).get(index, f"Measurement_{index}"), size=str(len(values[0])))
            for k, value in enumerate(values):
                res.set(f"{{{SHA384_NS}}}Hash{k}", value.hex())
        signer = XMLSigner(signature_algorithm=SignatureMethod.ECDSA_SHA384, digest_algorithm=DigestAlgorithm.SHA384,
                           c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1)
        signed = signer.sign(root, key=self.signer_key, cert=list(self.chain))
        return etree.tostring(signed)
