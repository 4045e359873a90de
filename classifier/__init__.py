"""Which repository a request is about: rules first, then the fast model, else ask."""

from classifier.classify import Classification, Classifier, RequestContext

__all__ = ["Classification", "Classifier", "RequestContext"]
