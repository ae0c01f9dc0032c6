from django.contrib.auth.models import AbstractUser
from django.db import models
from django_scim.models import AbstractSCIMGroupMixin, AbstractSCIMUserMixin


class Group(AbstractSCIMGroupMixin):
    name = models.CharField(max_length=150)


class User(AbstractSCIMUserMixin, AbstractUser):
    memberships = models.ManyToManyField(Group, related_name="user_set", blank=True)

    @property
    def scim_groups(self):
        return self.memberships
