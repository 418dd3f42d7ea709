"""The task backends, one module per `invoke` task: each a short sequence of calls into the layers below
(classifier.lecture, classifier.machinery). tasks.py calls them.
"""
